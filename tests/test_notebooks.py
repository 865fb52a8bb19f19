"""The notebooks are the source: src/ must match a fresh export, and every chapter's tests pass."""
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_src_matches_a_fresh_export(tmp_path):
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    subprocess.run([BIN / "nbdev-export"], cwd=tmp_path, check=True, capture_output=True)
    fresh, ours = tmp_path / "src" / "notelab", ROOT / "src" / "notelab"
    names = sorted({str(p.relative_to(fresh)) for p in fresh.rglob("*.py")} |
                   {str(p.relative_to(ours)) for p in ours.rglob("*.py")})
    differ = [n for n in names if not (fresh / n).exists() or not (ours / n).exists()
              or not filecmp.cmp(fresh / n, ours / n, shallow=False)]
    assert not differ, f"src/notelab differs from a fresh nbdev-export in {differ}: edit nbs/, run nbdev-export, commit both"


def chapters(part: str, env: dict) -> subprocess.CompletedProcess:
    "Run tests/chapters.py on one part; its table of chapters and seconds goes to test-artifacts/."
    r = subprocess.run([sys.executable, ROOT / "tests" / "chapters.py", "--workers", "2", "--part", part], cwd=ROOT,
                       capture_output=True, text=True, env=env)
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    (ROOT / "test-artifacts" / f"chapters-{part}.log").write_text(r.stdout + r.stderr)
    return r


@pytest.mark.worker
def test_chapters_that_ask_the_worker(shared):
    """Every chapter's tests, two chapters at a time as nbdev-test runs them (in-process), and no chapter may leave
    notelab's settings changed for the chapter after it; the example and experiment notebooks run under nbval.
    These are the chapters that ask the run's shared worker; the light part runs the others."""
    r = chapters("heavy", {**os.environ, "NOTELAB_TEST_WORKER": shared})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]


def test_chapters_that_need_no_worker():
    "The chapters that ask no worker, beside the heavy part: one that asks for a worker fails, naming the fix."
    r = chapters("light", {k: v for k, v in os.environ.items() if k != "NOTELAB_TEST_WORKER"})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]
