"""Chaos: a sweep started through the lab's REST API while, at random moments, one run's process, one replica of
the worker the notebooks use, and the lab server itself are killed with SIGKILL (and the lab is started again).
At the end every run has ended (FINISHED, FAILED or KILLED, with a reason when it did not finish), the parent
says how its variants ended, no process or kernel of the sweep is left, and the lab's API and MLflow agree."""
import os
import random
import secrets
import signal
import time

import nbformat
import psutil
import pytest

from labserver import Lab


def wait_for(what, check, within: float = 600, every: float = 0.3):
    "Poll `check()` until it returns something true; fail naming `what` after `within` seconds."
    deadline = time.monotonic() + within
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what}: not after {within} s"
        time.sleep(every)
    return got


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.no_extra_replica
def test_a_sweep_survives_killed_runs_replicas_and_labs(shared, tmp_path):
    from mlflow import MlflowClient

    from notelab.runs import kernel_of, executor_of, get_run
    from notelab.store import tracking_uri
    from notelab.workers import get_worker, scale_worker

    seed = int(os.environ.get("NOTELAB_CHAOS_SEED", time.time()))
    rng = random.Random(seed)
    print(f"chaos seed {seed} (NOTELAB_CHAOS_SEED={seed} repeats it)")
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("k = 1\nworker = ''\nrounds = 4")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(
        "import time\nimport notelab\nfrom notelab.tracking import log_metric\n"
        "client = notelab.connect(worker)\ntokens = 0\n"
        "for i in range(rounds):\n"
        "    r = client.completions.create(model=client.model, prompt=f'Count to {k + i}:', max_tokens=8,\n"
        "                                  extra_body={'ignore_eos': True})\n"
        "    tokens += r.usage.completion_tokens\n"
        "    time.sleep(1)\n"
        "log_metric('tokens', tokens)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "chaos.ipynb")
    experiment = f"chaos-{secrets.token_hex(3)}"
    lab = Lab(root, tmp_path / "lab.log").start()
    try:
        sweep = lab.post("sweeps", {"notebook": "chaos.ipynb", "grid": {"k": [1, 2, 3, 4, 5, 6]},
                                    "params": {"worker": shared}, "experiment": experiment, "parallel": 2})
        parent = sweep["run_id"]
        coordinator = executor_of(get_run(parent))

        def running_variant():
            rows = lab.get("runs", experiment=experiment)
            return next((r for r in rows if r["parent_run_id"] == parent and r["status"] == "RUNNING"
                         and kernel_of(r["run_id"]) is not None), None)

        # 1. one run's process, once its notebook runs
        victim_run = wait_for("a variant with a kernel", running_variant)
        time.sleep(rng.uniform(0, 2))
        victim = executor_of(get_run(victim_run["run_id"]))
        os.kill(victim.pid, signal.SIGKILL)
        # 2. a replica of the worker the notebooks use
        time.sleep(rng.uniform(0, 3))
        replica = rng.choice(get_worker(shared).replicas)
        os.killpg(replica.pid, signal.SIGKILL)
        # 3. the lab itself, then a new one on the same port and store
        time.sleep(rng.uniform(0, 3))
        lab.kill()
        lab.start()

        # the sweep goes on without the lab that started it, and ends
        wait_for("the sweep to end", lambda: lab.get(f"runs/{parent}")["status"] != "RUNNING", within=900, every=1)
        rows = lab.get("runs", experiment=experiment)
        variants = [r for r in rows if r["parent_run_id"] == parent]
        top = next(r for r in rows if r["run_id"] == parent)
        assert len(variants) == 6 and all(r["status"] in ("FINISHED", "FAILED", "KILLED") for r in rows), rows
        assert all(r["error"] for r in rows if r["status"] != "FINISHED"), rows  # nothing ends without a reason
        killed = next(r for r in variants if r["run_id"] == victim_run["run_id"])
        assert killed["status"] == "FAILED" and killed["error"] == "process died: SIGKILL", killed
        assert sum(r["status"] == "FINISHED" for r in variants) >= 3, variants  # the replica's death cost no run
        # the parent says which
        statuses = [r["status"] for r in variants]
        summary = MlflowClient(tracking_uri()).get_run(parent).data.tags["notelab.summary"]
        expected = ", ".join(f"{statuses.count(s)} {s.lower()}" for s in ("FINISHED", "FAILED", "KILLED") if s in statuses)
        assert summary == expected and top["status"] == "FINISHED", (summary, top)
        # the lab and MLflow agree
        c = MlflowClient(tracking_uri())
        assert {r["run_id"]: r["status"] for r in rows} == {r["run_id"]: c.get_run(r["run_id"]).info.status for r in rows}
        # no process or kernel of the sweep is left
        kernels = [k for r in variants if (k := kernel_of(r["run_id"])) is not None]
        executors = [e for r in variants if (e := executor_of(get_run(r["run_id"]))) is not None]
        wait_for("every process of the sweep to be gone",
                 lambda: not any(x.alive() for x in [coordinator, *executors, *kernels]), within=60)
        assert not [q for q in psutil.process_iter(["cmdline", "status"]) if q.info["status"] != psutil.STATUS_ZOMBIE
                    and any(r["run_id"] in " ".join(q.info["cmdline"] or []) for r in rows)]
    finally:
        lab.stop()
        # the worker serves the rest of the test run with both replicas again
        if len(get_worker(shared).ready) < 2:
            scale_worker(shared, 2, show_progress=False)
