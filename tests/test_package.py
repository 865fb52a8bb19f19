"""The distribution as users get it: `python -m build` in a clean copy of the repository gives a wheel that carries
the lab extension and the server extension's configuration, so `pip install notelab` gives the whole suite.

The build is isolated (its backend, hatch-jupyter-builder and jupyter-builder come from the package registry, as
for anyone building it) and builds lab_ext/ with npm. The fresh environment then takes the wheel without its
dependencies and borrows them from this test environment (a `.pth`), so that the check does not download the lab
again: what it checks is what the wheel itself puts where Jupyter looks."""
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def clean_copy(dest: Path) -> Path:
    "What a fresh clone holds of this working tree: tracked and untracked files, nothing git ignores (no builds)."
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            (dest / f).write_bytes(src.read_bytes())
    return dest


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("package")
    src = clean_copy(tmp / "notelab")
    assert not (src / "lab_ext" / "labextension").exists() and not (src / "lab_ext" / "node_modules").exists()
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp / "dist"


def test_the_wheel_carries_the_lab_extension_and_the_server_configuration(dist):
    wheel, = dist.glob("notelab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = next(n.split("/data/")[0] for n in names if "/data/" in n) + "/data/"
    ext = data + "share/jupyter/labextensions/notelab/"
    assert ext + "package.json" in names
    assert any(re.fullmatch(re.escape(ext) + r"static/remoteEntry\.[0-9a-f]+\.js", n) for n in names), names
    assert data + "etc/jupyter/jupyter_server_config.d/notelab.json" in names
    assert "notelab/server.py" in names and "notelab/metrics/exact_match.py" in names
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))  # the persona, for Jupyter AI
    assert "[jupyter_ai.personas]\nnotelab = notelab.jupyter_ai:NotelabPersona" in zipfile.ZipFile(wheel).read(meta).decode()
    sdist, = dist.glob("notelab-*.tar.gz")  # an sdist holds the built extension too: a wheel from it needs no npm
    import tarfile

    members = tarfile.open(sdist).getnames()
    assert any(m.endswith("lab_ext/labextension/package.json") for m in members)
    assert not any("node_modules" in m for m in members)


def test_a_fresh_environment_with_the_wheel_lists_notelab_ok(dist, tmp_path):
    wheel, = dist.glob("notelab-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site_dir = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    here = sysconfig.get_paths()["purelib"]
    Path(site_dir, "_borrowed_dependencies.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env["NO_COLOR"] = "1"
    where = subprocess.run([py, "-c", "import notelab; print(notelab.__file__)"], capture_output=True, text=True,
                           env=env, check=True).stdout
    assert where.startswith(str(venv)), where  # the wheel's notelab, not this checkout's

    def strip(s):  # jupyter's lists colour their verdicts
        return re.sub(r"\x1b\[[0-9;]*m", "", s)

    lab = subprocess.run([py, "-m", "jupyterlab.labextensions", "list"], capture_output=True, text=True, env=env)
    out = strip(lab.stdout + lab.stderr)
    assert re.search(rf"{re.escape(str(venv))}/share/jupyter/labextensions\n\s+notelab v\S+ enabled OK", out), out
    server = subprocess.run([py, "-m", "jupyter_server.extension.serverextension", "list"], capture_output=True,
                            text=True, env=env)
    out = strip(server.stdout + server.stderr)
    assert re.search(rf"Config dir: {re.escape(str(venv))}/etc/jupyter\n\s+notelab enabled\n.*\n\s+notelab \S+ OK",
                     out), out
