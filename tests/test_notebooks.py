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


@pytest.mark.worker
def test_nbdev_test(shared):
    """Every chapter's tests, two chapters at a time as nbdev-test runs them (in-process), and no chapter may leave
    notelab's settings changed for the chapter after it; the example and experiment notebooks run under nbval."""
    r = subprocess.run([sys.executable, ROOT / "tests" / "chapters.py", "--workers", "2"], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "NOTELAB_TEST_WORKER": shared})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]
