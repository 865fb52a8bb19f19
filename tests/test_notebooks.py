"""The notebooks are the source: src/ must match a fresh export, and every chapter's tests pass."""
import contextlib
import filecmp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
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


CHAPTERS_TIMEOUT = 900  # seconds for one part (about 3 min here); a part that hangs fails, naming what it left


def chapters(part: str, env: dict, *notebooks) -> tuple[int | None, str, list[str]]:
    """Run tests/chapters.py on one part (or on `notebooks`) in a process group of its own: its exit status (None if
    it ran past CHAPTERS_TIMEOUT), its output (also in test-artifacts/), and the processes it left running, which are
    killed. The process is waited for, not the end of its output: a child a chapter left behind holds the output
    open (a hung forked child once held a whole CI run that way)."""
    log = ROOT / "test-artifacts" / f"chapters-{part}.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, ROOT / "tests" / "chapters.py", "--workers", "2", "--part", part,
                              *map(str, notebooks)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=CHAPTERS_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = None
        left = {}
        for proc in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error, OSError):
                if proc.pid != p.pid and os.getpgid(proc.pid) == p.pid and not gone(proc.pid):
                    left[proc.pid] = f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])[:200]}"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    deadline = time.monotonic() + 60  # SIGKILL ends them at once, but not before this line
    while not all(map(gone, left)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return rc, log.read_text(), list(left.values())


def gone(pid: int) -> bool:
    "Ended (a zombie that whoever adopted it has not reaped yet counts)."
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def check_part(part: str, env: dict) -> None:
    rc, out, left = chapters(part, env)
    assert rc == 0 and not left, (f"exit status {rc} (None: ran past {CHAPTERS_TIMEOUT} s)\n" + out[-8000:] +
                                  "".join(f"\nleft running: {x}" for x in left))


@pytest.mark.worker
def test_chapters_that_ask_the_worker(shared):
    """Every chapter's tests, two chapters at a time as nbdev-test runs them (in-process), and no chapter may leave
    notelab's settings changed for the chapter after it; the example and experiment notebooks run under nbval.
    These are the chapters that ask the run's shared worker; the light part runs the others."""
    check_part("heavy", {**os.environ, "NOTELAB_TEST_WORKER": shared})


def test_chapters_that_need_no_worker():
    "The chapters that ask no worker, beside the heavy part: one that asks for a worker fails, naming the fix."
    check_part("light", {k: v for k, v in os.environ.items() if k != "NOTELAB_TEST_WORKER"})


def test_a_process_a_chapter_leaves_is_named_and_killed_not_waited_on(tmp_path):
    "A chapter's child that outlives it (holding the output open, as a hung child would): the part fails naming it."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import subprocess, sys\nkid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])")])
    nbformat.write(nb, tmp_path / "leaves.ipynb")
    rc, out, left = chapters("all", {k: v for k, v in os.environ.items() if k != "NOTELAB_TEST_WORKER"},
                             tmp_path / "leaves.ipynb")
    assert rc == 0 and "ok" in out and "leaves.ipynb" in out, out
    assert len(left) == 1 and "time.sleep(3600)" in left[0], left
    assert gone(int(left[0].split(":")[0]))
