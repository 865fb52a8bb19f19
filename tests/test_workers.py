"""Local workers: launch, faults, kill, scale, down. Real vLLM processes throughout."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import notelab
from notelab.core import (EngineError, LimitError, PortInUseError, UnknownModelError, WorkerError,
                          WorkerNameTakenError, WorkerStartError)
from notelab.settings import settings
from notelab.workers import get_worker, launch_worker, list_workers, scale_worker, stop_worker, worker_logs

from conftest import vllm_pids

NOTELAB = str(Path(sys.executable).parent / "notelab")
pytestmark = pytest.mark.vllm_processes  # many tests here compare this machine's vLLM processes before and after


def names():
    return {w.name for w in list_workers(probe=False)}


def test_unknown_model_leaves_nothing():
    before, procs = names(), vllm_pids()
    with pytest.raises(UnknownModelError, match="no model 'llama-9000'.*notelab models add PATH --name llama-9000"):
        launch_worker("llama-9000", name="x1")
    assert names() == before and vllm_pids() == procs


@pytest.mark.worker
def test_taken_name(shared):
    with pytest.raises(WorkerNameTakenError, match=f"a worker named '{shared}' exists"):
        launch_worker(name=shared)
    assert len(get_worker(shared).replicas) == 2


def test_gpus_on_a_cpu_machine_is_an_error():
    before, procs = names(), vllm_pids()
    with pytest.raises(EngineError, match="cannot use GPUs; install envs/gpu.txt|this machine has 0"):
        launch_worker(name="gpu1", gpus_per_replica=1)
    assert names() == before and vllm_pids() == procs


def test_limits():
    with pytest.raises(LimitError, match=r"replicas 99: at most 8 replicas per worker \(\[limits\] max_replicas\)"):
        launch_worker(name="many", replicas=99)


def test_port_in_use_leaves_nothing():
    before, procs = names(), vllm_pids()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is in use by .*choose another --port"):
            launch_worker(name="porty", port=port)
    assert names() == before and vllm_pids() == procs


@pytest.mark.slow
@pytest.mark.no_extra_replica
def test_bad_vllm_argument_leaves_nothing():
    before, procs = names(), vllm_pids()
    with pytest.raises(EngineError, match="--no-such-flag: the installed vLLM has no such option"):
        launch_worker(name="badarg", replicas=2, extra_args=["--no-such-flag"])  # refused before anything starts
    assert names() == before and vllm_pids() == procs
    with pytest.raises(WorkerStartError) as e:  # an option it has, with a value it refuses: vLLM says so, and exits
        launch_worker(name="badarg", replicas=2, extra_args=["--max-num-seqs", "many"])
    assert "exited with code 2 while starting: error: argument --max-num-seqs: invalid int value: 'many'" in str(e.value)
    assert "invalid int value: 'many'" in e.value.log_tail
    assert e.value.log_path.exists() and ".failed" in str(e.value.log_path)  # the whole log is kept
    assert names() == before and vllm_pids() == procs


def test_no_spelling_of_a_reserved_flag_reaches_vllm():
    "vLLM takes prefixes and underscores: a worker started with --api-k=EVIL served that key (the lab got 401)."
    before, procs = names(), vllm_pids()
    for bad in (["--api-k=EVIL"], ["--api_key", "x"], ["--hos=0.0.0.0"], ["--served_model_name", "x"], ["--config", "c.yaml"]):
        with pytest.raises(EngineError, match="which notelab sets"):
            launch_worker(name="sneaky", extra_args=bad)
    assert names() == before and vllm_pids() == procs


@pytest.mark.slow
@pytest.mark.no_extra_replica
def test_start_timeout_leaves_nothing(monkeypatch):
    monkeypatch.setenv("NOTELAB_WORKERS_START_TIMEOUT", "3")
    before, procs = names(), vllm_pids()
    with pytest.raises(WorkerStartError, match=r"was not healthy after 3s; raise \[workers\] start_timeout"):
        launch_worker(name="slowpoke")
    time.sleep(0.5)
    assert names() == before and vllm_pids() == procs


@pytest.mark.slow
@pytest.mark.no_extra_replica
def test_down_while_up_starts_stops_it_and_up_says_so():
    "`worker down` in the middle of another `worker up` of the same name: nothing is left, and `up` says why it ended."
    before, procs = names(), vllm_pids()
    ended = []

    def up():
        try:
            launch_worker(name="downed", show_progress=False)
        except Exception as e:  # noqa: BLE001 - what it raised is the finding
            ended.append(e)

    t = threading.Thread(target=up)
    t.start()
    try:
        while not ("downed" in names() and get_worker("downed", probe=False).replicas):  # its replica is starting
            assert t.is_alive(), ended
            time.sleep(0.1)
        stopped = stop_worker("downed")
    finally:
        t.join(120)
    assert [r.state for r in stopped.replicas] == ["stopped"]
    assert len(ended) == 1 and type(ended[0]) is WorkerError, ended
    assert str(ended[0]) == "worker 'downed' was stopped (`notelab worker down`) while it started"
    assert names() == before and vllm_pids() == procs


def test_cli_errors_are_one_clear_line():
    r = subprocess.run([NOTELAB, "worker", "logs", "ghost"], capture_output=True, text=True)
    assert r.returncode == 1 and "error: no worker named 'ghost'" in r.stderr and "Traceback" not in r.stderr
    env = {**os.environ, "NOTELAB_WORKERS_START_TIMEOUT": "soon"}
    r = subprocess.run([NOTELAB, "worker", "ls"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "[workers] start_timeout = 'soon' is not a number" in r.stderr


@pytest.mark.worker
def test_replica_logs_are_private(shared):
    "A replica's log holds what it was asked; only its owner reads it (it was 0644)."
    for r in get_worker(shared).replicas:
        assert oct(Path(r.log).stat().st_mode & 0o777) == "0o600", r.log


@pytest.mark.worker
def test_ls_json_shape_from_a_fresh_process(shared):
    r = subprocess.run([NOTELAB, "worker", "ls", "--json"], capture_output=True, text=True, check=True)
    ws = {w["name"]: w for w in json.loads(r.stdout)}
    w = ws[shared]
    assert {"name", "model", "state", "endpoint", "replicas"} <= set(w)
    assert w["state"] == "ready" and w["model"].startswith("gemma-3-270m@")
    assert all({"pid", "port", "state"} <= set(r) and r["state"] == "ready" for r in w["replicas"])
    assert all("api_key" not in r for r in w["replicas"])  # keys stay in the registry


@pytest.mark.worker
def test_cli_chat_and_env(shared):
    r = subprocess.run([NOTELAB, "chat", "--worker", shared, "--max-tokens", "8", "Say hello."],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip()
    r = subprocess.run([NOTELAB, "worker", "env", shared], capture_output=True, text=True, check=True)
    env = dict(l.removeprefix("export ").split("=", 1) for l in r.stdout.splitlines())
    import openai
    c = openai.OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"])
    assert env["OPENAI_MODEL"] in [m.id for m in c.models.list().data]
    with pytest.raises(openai.AuthenticationError):  # each replica checks its key
        openai.OpenAI(base_url=env["OPENAI_BASE_URL"], api_key="wrong").models.list()



@pytest.mark.slow
def test_lifecycle_on_a_given_port_and_down_leaves_no_process():
    """Own worker: --port, extra vLLM args, logs, scale down, and `worker down` leaving no process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        r = subprocess.run([NOTELAB, "worker", "up", "--name", "life", "--port", str(port), "--json",
                            "--", "--max-num-seqs", "4"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        w = json.loads(r.stdout)  # progress goes to stderr: stdout is the JSON alone
        assert w["state"] == "ready" and w["replicas"][0]["port"] == port
        assert w["extra_args"] == ["--max-num-seqs", "4"] and w["endpoint"] == f"http://127.0.0.1:{port}/v1"
        pid = w["replicas"][0]["pid"]
        family = {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
        assert len(family) >= 2  # the API server and its engine core
        tmp = Path(w["replicas"][0]["tmp_dir"])  # vLLM's IPC sockets: in a folder of the replica's, not loose in /tmp
        assert tmp.is_dir() and any(p.is_socket() for p in tmp.iterdir())
        log = "\n".join(worker_logs("life", lines=400))
        assert "--max-num-seqs 4" in log and "Application startup complete" in log
        assert "the engine core and its worker start by fork" in log  # notelab's vLLM platform plugin ([workers] cpu_fork)
        spin = settings().workers.cpu_spin_ms
        assert f"the engine's processes busy-wait {spin} ms for a message" in log and "not applied" not in log
        assert "vLLM's copies of the tokenizer share the vocabulary and merges" in log  # 2.5 s less to readiness
        client = notelab.connect("life")
        r = client.completions.create(model=client.model, prompt="Hi", max_tokens=4, extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"
        # answered, the replica's processes sleep: none keeps running (vLLM's own wait spins a core for a second)
        procs = [psutil.Process(p) for p in family]
        samples = []
        for _ in range(20):
            samples.append({p.pid for p in procs if p.status() == psutil.STATUS_RUNNING})
            time.sleep(0.05)
        busiest = max(sum(p.pid in s for s in samples) for p in procs)
        assert busiest <= 10, (busiest, samples)
        r = subprocess.run([NOTELAB, "worker", "down", "life"], capture_output=True, text=True)
        assert r.returncode == 0 and "stopped life" in r.stdout
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in family)
        assert "life" not in names()
        assert not (Path(os.environ["NOTELAB_LAB_DATA_DIR"]) / "workers" / "life").exists()
        assert not tmp.exists()
    finally:
        if "life" in names():
            stop_worker("life")


def _versions_of(name):
    return sorted(r.model for r in get_worker(name).replicas)


@pytest.mark.worker
@pytest.mark.slow
def test_update_and_rollback_lose_no_request(shared, tmp_path):
    """The run's two-replica worker rolls to a second version of its model and back while clients stream through
    notelab.connect and through the lab's proxy: no request fails, and the version in the answers switches over;
    a failed update leaves the old version serving and says why. (On the shared worker: a third replica is what
    this machine's memory holds besides, and nothing else runs while pytest runs this test.)"""
    import httpx
    from labserver import Lab

    from notelab.models import MANIFEST, add_model, remove_model, resolve
    from notelab.workers import rollback_worker, update_worker, worker_history

    v1 = get_worker(shared).model
    src = resolve(v1).path
    d = tmp_path / "v2"  # the same weights as another version, told apart by a note
    shutil.copytree(src, d, ignore=shutil.ignore_patterns(MANIFEST), copy_function=os.link)
    (d / "NOTE.txt").write_text("rollout test: a second version of the same weights\n")
    v2 = add_model(d, name=v1.split("@")[0], show_progress=False).ref
    assert v2 != v1
    lab = None
    try:
        lab = Lab(tmp_path, tmp_path / "lab.log").start()
        phase, seen, errors, stop = ["before"], [], [], threading.Event()
        client = notelab.connect(shared)

        def through_connect():
            while not stop.is_set():
                p = phase[0]
                try:
                    raw = client.completions.with_raw_response.create(model=client.model, prompt="Count: 1, 2,",
                                                                     max_tokens=8, stream=True)
                    text = "".join(c.choices[0].text for c in raw.parse() if c.choices)
                    seen.append(("connect", p, raw.headers["x-notelab-model"], bool(text)))
                except Exception as e:  # noqa: BLE001 - every failure is the finding
                    errors.append(("connect", p, repr(e)))
                stop.wait(1.0)  # a steady stream that leaves the two cores room to start replicas

        def through_lab():
            url = f"http://127.0.0.1:{lab.port}/notelab/workers/{shared}/v1/completions"
            while not stop.is_set():
                p = phase[0]
                try:
                    with httpx.stream("POST", url, headers=lab.auth, timeout=300, json={
                            "model": client.model, "prompt": "Say a word:", "max_tokens": 8, "stream": True}) as r:
                        body = r.read().decode()
                    if r.status_code != 200 or "[DONE]" not in body:
                        errors.append(("lab", p, r.status_code, body[-300:]))
                    else:
                        seen.append(("lab", p, r.headers["x-notelab-model"], True))
                except Exception as e:  # noqa: BLE001
                    errors.append(("lab", p, repr(e)))
                stop.wait(1.0)

        def answered(n):  # wait for n more answers through each client
            have = {c: sum(1 for x in seen if x[0] == c) for c in ("connect", "lab")}
            while any(sum(1 for x in seen if x[0] == c) < have[c] + n for c in have):
                assert not errors, errors
                time.sleep(0.2)

        threads = [threading.Thread(target=f) for f in (through_connect, through_lab)]
        for t in threads:
            t.start()
        try:
            answered(2)
            phase[0] = "updating"
            w = update_worker(shared, v2, show_progress=False)
            assert w.model == v2 and _versions_of(shared) == [v2, v2]
            phase[0] = "updated"
            answered(2)
            phase[0] = "rolling back"
            w = rollback_worker(shared, show_progress=False)
            assert w.model == v1 and _versions_of(shared) == [v1, v1]
            phase[0] = "rolled back"
            answered(2)
        finally:
            stop.set()
            for t in threads:
                t.join(300)
        assert errors == [], errors
        by_phase = {p: {v for _, q, v, _ in seen if q == p} for p in ("before", "updated", "rolled back")}
        assert by_phase == {"before": {v1}, "updated": {v2}, "rolled back": {v1}}, seen
        assert all(ok for *_, ok in seen)

        # a version that cannot start: the rollout stops at its first replica, and v1 serves as before
        with pytest.raises(notelab.NotelabError, match=f"the update to {v1} stopped, and {v1} serves as before: .*"
                                                      "(max_model_len|max-model-len)"):
            update_worker(shared, extra_args=["--max-model-len", "1000000"], show_progress=False)
        w = get_worker(shared, probe=False)
        assert _versions_of(shared) == [v1, v1] and not any(r.draining for r in w.replicas)
        assert {r.state for r in w.replicas} == {"ready"} and len(w.replicas) == 2
        still = client.completions.create(model=client.model, prompt="Still here:", max_tokens=2)
        assert still.choices[0].finish_reason in ("stop", "length")  # answered (a base model may stop at once)
        events = [(h["event"], h["model"]) for h in worker_history(shared)][-4:]
        assert events == [("launch", v1), ("update", v2), ("rollback", v1), ("failed", v1)]
        assert "max" in worker_history(shared)[-1]["reason"]
        r = subprocess.run([NOTELAB, "worker", "history", shared, "--json"], capture_output=True, text=True)
        assert r.returncode == 0 and [h["event"] for h in json.loads(r.stdout)][-1] == "failed"
    finally:
        if lab:
            lab.stop()
        if get_worker(shared, probe=False).model != v1:  # leave the run's worker as it was
            update_worker(shared, v1, show_progress=False)
        remove_model(v2)
