"""Where pip is told to find packages on this machine (its config files and PIP_* variables: find-links, indexes,
constraints, certificate, timeout), as the variables that tell uv the same, one `export` line each, for the
Makefile to `eval` before `uv pip install`. uv reads no pip.conf; without these it would miss what lies on disk
(here: the CPU build of torch under find-links) and take the other packages from PyPI only."""
import shlex
import subprocess
import sys

listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
conf: dict[str, str] = {}
for line in listed.splitlines():  # global.find-links='/opt/wheels', :env:.extra-index-url='…' (later lines win)
    key, _, value = line.partition("=")
    conf[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")

uv = {"UV_INDEX_STRATEGY": "unsafe-best-match"}  # pip's rule: the best version from any index, not the first index
if words := conf.get("find-links", "").split():
    uv["UV_FIND_LINKS"] = ",".join(words)
if conf.get("index-url"):
    uv["UV_INDEX_URL"] = conf["index-url"]
if words := conf.get("extra-index-url", "").split():
    uv["UV_EXTRA_INDEX_URL"] = " ".join(words)
if words := conf.get("constraint", "").split():
    uv["UV_CONSTRAINT"] = " ".join(words)
if conf.get("cert"):
    uv["SSL_CERT_FILE"] = conf["cert"]
if conf.get("default-timeout"):
    uv["UV_HTTP_TIMEOUT"] = conf["default-timeout"]
for k, v in uv.items():
    print(f"export {k}={shlex.quote(v)}")
