"""What tracking costs: `notelab run` against a bare papermill call on the same notebook, and sweep throughput.

    python bench/experiments.py [--rounds 5] [--variants 6] [--cell-seconds 2]

The notebook has a `parameters` cell, sleeps `--cell-seconds` (a stand-in for real work) and logs a
metric. Runs alternate (papermill, notelab run, papermill, ...) so that drift in the machine's speed
hits both alike; each figure is the median over rounds. Both are command-line calls, each a fresh
process, as a user would type them. A sweep of `--variants` variants then runs at `--parallel 1` and 2.
Everything goes to a throwaway data directory.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from rich.console import Console
from rich.table import Table

BIN = Path(sys.executable).parent


def notebook(folder: Path, seconds: float) -> Path:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(f"k = 1\nseconds = {seconds}")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("import time\ntime.sleep(seconds)\nscore = k * 2"),
                nbformat.v4.new_code_cell("from notelab.tracking import log_metric\nlog_metric('score', score)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    f = folder / "bench.ipynb"
    nbformat.write(nb, f)
    return f


def timed(cmd: list, env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", type=int, default=6)
    ap.add_argument("--cell-seconds", type=float, default=2.0)
    a = ap.parse_args()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="notelab-bench-exp-"))
    env = {**os.environ, "NOTELAB_LAB_DATA_DIR": str(tmp / "data"), "NOTELAB_PROGRESS": "none"}
    nb = notebook(tmp, a.cell_seconds)
    bare, tracked = [], []
    timed([BIN / "notelab", "run", nb, "--experiment", "warm-up"], env)  # creates the MLflow store once
    for i in range(a.rounds):
        bare.append(timed([BIN / "papermill", "-p", "k", str(i), "--no-progress-bar", nb, tmp / f"out-{i}.ipynb"], env))
        tracked.append(timed([BIN / "notelab", "run", nb, "-p", "k", str(i), "--experiment", "bench"], env))
    b, t = statistics.median(bare), statistics.median(tracked)
    table = Table(title=f"one run of a notebook with a {a.cell_seconds:g} s cell (median of {a.rounds})",
                  title_justify="left")
    for c in ("path", "seconds", "overhead s", "ratio to papermill"):
        table.add_column(c, justify="right" if c != "path" else "left")
    table.add_row("papermill (bare)", f"{b:.2f}", "", "1.00")
    table.add_row("notelab run (MLflow run, params, metrics, output artifact)", f"{t:.2f}", f"{t - b:+.2f}",
                  f"{t / b:.2f}")
    console.print(table)

    rates = {}
    for parallel in (1, 2):
        values = ",".join(str(v) for v in range(a.variants))
        s = timed([BIN / "notelab", "sweep", nb, "--grid", f"k={values}", "--metric", "score", "--parallel",
                   str(parallel), "--experiment", f"sweep-{parallel}", "--json"], env)
        rates[parallel] = a.variants / s * 60
    table = Table(title=f"sweep of {a.variants} variants ({os.cpu_count()} cores)", title_justify="left")
    for c in ("--parallel", "variants/min", "ratio to --parallel 1"):
        table.add_column(c, justify="right")
    for p, r in rates.items():
        table.add_row(str(p), f"{r:.1f}", f"{r / rates[1]:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
