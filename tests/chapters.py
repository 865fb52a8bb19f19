"""Run every chapter's tests as `nbdev-test` does (in-process, several chapters one after another in each of
`--workers` processes), and fail a chapter that leaves notelab's settings changed in its process: the next
chapter there would inherit them (a chapter's scratch data folder, say, where the shared worker is not
registered). `python tests/chapters.py [--workers N] [--part all|light|heavy] [NOTEBOOK ...]`; exits 1 when a
chapter fails or leaks.

`--part heavy`: the chapters that ask the run's shared worker for answers (`WITH_WORKER`); `--part light`: the
others, with `NOTELAB_TEST_WORKER` naming no worker, so a chapter that asks for one fails at once, naming this
list (it never starts one). `make test` runs the two parts at once, as it does the tests.
"""
import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
# the chapters that ask the shared worker (NOTELAB_TEST_WORKER) for answers (found by running every chapter with
# NO_WORKER: these failed, the others passed)
WITH_WORKER = {"04_workers", "05_client", "15_agents", "15b_pipelines", "15c_pipeline_files", "17b_lab_chat",
               "18_widgets"}
NO_WORKER = "none-see-tests-chapters-py"  # the light part's chapters are given this worker, which never exists


def settings_env() -> dict:
    return {k: v for k, v in os.environ.items() if k.startswith("NOTELAB_")}


def one(path: str) -> tuple[str, bool, float, list[str]]:
    from nbdev.config import get_config
    from nbdev.test import test_nb
    from fastcore.xtras import working_directory

    cfg = get_config(NBS)
    before = settings_env()
    t0 = time.monotonic()
    with working_directory(NBS):
        ok, _ = test_nb(Path(path), skip_flags=cfg.tst_flags.split(), basepath=cfg.config_path,
                        cell_timeout=cfg.cell_timeout or None)
    after = settings_env()
    leaked = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    for k in leaked:  # report it, and put it back so the chapters after it are judged on their own
        if k in before:
            os.environ[k] = before[k]
        else:
            os.environ.pop(k, None)
    return Path(path).name, ok, time.monotonic() - t0, leaked


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("notebooks", nargs="*")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--part", choices=("all", "light", "heavy"), default="all",
                    help="heavy: the chapters in WITH_WORKER; light: the others, with no worker to ask")
    a = ap.parse_args()
    files = [str(Path(n).resolve()) for n in a.notebooks] or sorted(
        str(p) for p in [*NBS.glob("*.ipynb"), *NBS.glob("metrics/*.ipynb")])  # examples, experiments: nbval
    if a.part != "all":
        files = [f for f in files if (Path(f).stem in WITH_WORKER) == (a.part == "heavy")]
    if a.part == "light":
        os.environ["NOTELAB_TEST_WORKER"] = NO_WORKER
    os.environ["IN_TEST"] = "1"
    import chapters  # `one` by an importable name: a chapter's shell replaces `__main__` in the worker

    results = []
    with ProcessPoolExecutor(a.workers) as pool:  # each chapter as it ends: a run that hangs shows which did not
        for done in as_completed([pool.submit(chapters.one, f) for f in files]):
            results.append(done.result())
            print(f"ended {results[-1][2]:6.1f} s  {results[-1][0]}", flush=True)
    bad = 0
    for name, ok, secs, leaked in sorted(results, key=lambda r: -r[2]):
        flag = "ok" if ok and not leaked else "FAILED" if not ok else "LEAKED"
        print(f"{flag:7} {secs:6.1f} s  {name}" + (f"  left changed: {', '.join(leaked)}" if leaked else ""))
        bad += flag != "ok"
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
