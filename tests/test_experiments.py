"""Notebooks as tracked jobs: real papermill kernels, a real MLflow store, the run's real vLLM worker."""
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient

from notelab.experiments import compare, list_runs, tracking_uri

ROOT = Path(__file__).resolve().parents[1]
NOTELAB = str(Path(sys.executable).parent / "notelab")
RAG_EVAL = ROOT / "nbs" / "experiments" / "rag_eval.ipynb"
PROMPT_AB = ROOT / "nbs" / "experiments" / "prompt_ab.ipynb"


def notelab(*args):
    return subprocess.run([NOTELAB, *map(str, args)], capture_output=True, text=True)


def as_json(r):
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {r.returncode}):\n{r.stdout}\n{r.stderr}") from None


@pytest.fixture
def experiment():
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    "A notebook with parameters, a metric, per-example scores and a way to fail on purpose."
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("k = 5\nscale: float = 1.0\nfail = False")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(
        "from notelab.tracking import log_metric, log_examples\n"
        "assert not fail, 'failing on purpose'\n"
        "log_metric('score', k * scale)\n"
        "log_examples([{'id': f'q{i}', 'score': i * scale + (i % 3) * 0.1} for i in range(20)])")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    f = tmp_path_factory.mktemp("nb") / "tiny.ipynb"
    nbformat.write(nb, f)
    return f


def n_runs(experiment: str) -> int:
    c = MlflowClient(tracking_uri())
    e = c.get_experiment_by_name(experiment)
    return 0 if e is None else len(c.search_runs([e.experiment_id]))


def test_run_records_parameters_metrics_and_output(tiny, experiment):
    r = notelab("run", tiny, "-p", "k", "3", "-p", "scale", "2", "--experiment", experiment, "--json")
    assert r.returncode == 0, r.stderr
    d = as_json(r)
    assert d["status"] == "FINISHED" and d["metrics"] == {"score": 6.0}
    assert d["params"] == {"k": 3, "scale": 2, "fail": False}
    run = MlflowClient(tracking_uri()).get_run(d["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params == {"k": "3", "scale": "2.0", "fail": "false"}  # defaults are recorded too (as text)
    assert run.data.metrics == {"score": 6.0}
    arts = {a.path for a in MlflowClient(tracking_uri()).list_artifacts(d["run_id"])}
    assert arts == {"tiny.ipynb", "examples"}
    out = nbformat.read(d["output_notebook"], as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in out.cells)


def test_unknown_parameter_is_refused_before_anything_runs(tiny, experiment):
    r = notelab("run", tiny, "-p", "kk", "3", "--experiment", experiment)
    assert r.returncode == 1
    assert "parameter 'kk' is not in tiny.ipynb's parameters cell (it declares: k, scale, fail)" in r.stderr
    r = notelab("run", tiny, "-p", "k", "three", "--experiment", experiment)
    assert r.returncode == 1 and "expects int, like its default k = 5" in r.stderr
    r = notelab("run", tiny, "-p", "k", "--experiment", experiment)
    assert r.returncode == 1
    assert n_runs(experiment) == 0  # no half-made run


def test_failing_notebook_is_a_failed_run_with_its_output(tiny, experiment):
    r = notelab("run", tiny, "-p", "fail", "true", "--experiment", experiment, "--json")
    assert r.returncode == 1
    d = as_json(r)
    assert d["status"] == "FAILED" and "AssertionError: failing on purpose" in d["error"]
    assert "failing on purpose" in Path(d["output_notebook"]).read_text()  # kept, with the traceback
    c = MlflowClient(tracking_uri())
    run = c.get_run(d["run_id"])
    assert run.info.status == "FAILED" and "failing on purpose" in run.data.tags["notelab.error"]
    assert "tiny.ipynb" in {a.path for a in c.list_artifacts(d["run_id"])}
    r = notelab("run", tiny, "-p", "fail", "true", "--experiment", experiment)  # for people: one red line
    assert r.returncode == 1 and "error: tiny.ipynb failed: cell" in r.stderr and "Traceback" not in r.stderr


def test_sweep_keeps_going_past_a_failing_variant(tiny, experiment):
    r = notelab("sweep", tiny, "--grid", "k=1,4", "--grid", "fail=false,true", "--metric", "score",
                "--parallel", "2", "--experiment", experiment, "--json")
    assert r.returncode == 1  # a variant failed
    d = as_json(r)
    rows = d["variants"]
    assert len(rows) == 4 and d["failed"] == 2
    ok = [v for v in rows if v["status"] == "FINISHED"]
    assert [v["k"] for v in ok] == [4, 1] and [v["score"] for v in ok] == [4.0, 1.0]  # sorted by the metric
    assert all("failing on purpose" in v["error"] for v in rows if v["status"] == "FAILED")
    children = list_runs(experiment, parent_run_id=d["parent_run_id"])
    assert len(children) == 4
    parent = MlflowClient(tracking_uri()).get_run(d["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_score"] == 4.0
    assert parent.data.tags["notelab.failed"] == "2"


def test_random_and_optuna_sweeps(tiny, experiment, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("k: {low: 1, high: 9, int: true}\nscale: {low: 0.5, high: 2.0}\n")
    r = notelab("sweep", tiny, "--random", "3", "--space", space, "--metric", "score", "--experiment", experiment,
                "--parallel", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = as_json(r)["variants"]
    assert len(rows) == 3 and all(1 <= v["k"] <= 9 and 0.5 <= v["scale"] <= 2.0 for v in rows)
    scores = [v["score"] for v in rows]
    assert scores == sorted(scores, reverse=True)
    r = notelab("sweep", tiny, "--optuna", "3", "--space", space, "--metric", "score", "--direction", "min",
                "--experiment", experiment, "--parallel", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = as_json(r)["variants"]
    assert len(rows) == 3 and [v["score"] for v in rows] == sorted(v["score"] for v in rows)
    r = notelab("sweep", tiny, "--optuna", "3", "--space", space, "--experiment", experiment)
    assert r.returncode == 1 and "--optuna N needs --metric M" in r.stderr


def test_compare_two_runs(tiny, experiment, tmp_path):
    a = as_json(notelab("run", tiny, "-p", "scale", "1.0", "--experiment", experiment, "--json"))
    b = as_json(notelab("run", tiny, "-p", "scale", "1.1", "--experiment", experiment, "--json"))
    plot = tmp_path / "ab.png"
    r = notelab("compare", a["run_id"], b["run_id"], "--metric", "score", "--plot", plot, "--json")
    assert r.returncode == 0, r.stderr
    d = as_json(r)
    # B scores i*1.1 against A's i*1.0: better on 19 of 20 examples (tied on the first), mean delta 0.95
    assert d["n"] == 20 and d["delta"] == pytest.approx(0.95) and d["significant"]
    assert d["ci"][0] < 0.95 < d["ci"][1] and d["p_value"] < 0.001
    assert plot.stat().st_size > 10_000
    c = compare(a["name"], b["name"], "score")  # by run name, from Python
    assert c.verdict().startswith("B scores higher on score")
    r = notelab("compare", a["run_id"], b["run_id"], "--metric", "f1")
    assert r.returncode == 1 and "no column 'f1'; numeric columns: score" in r.stderr


def test_runs_ls_json(tiny, experiment):
    d = as_json(notelab("run", tiny, "--experiment", experiment, "--json"))
    rows = as_json(notelab("runs", "ls", "--experiment", experiment, "--json"))
    assert len(rows) == 1
    row = rows[0]
    assert {"run_id", "status", "params", "metrics", "output_notebook"} <= set(row)
    assert row["run_id"] == d["run_id"] and row["metrics"] == {"score": 5.0} and row["params"]["k"] == 5
    assert Path(row["output_notebook"]).is_file()

    # one run, whole, by the start of its id that `runs ls` shows
    one = as_json(notelab("runs", "show", d["run_id"][:12], "--json"))
    assert one["run_id"] == d["run_id"] and one["source"]["notebook"] == str(tiny) and one["source"]["sha256"]
    assert one["examples"] == ["examples"] and set(one["artifacts"]) == {"examples", "tiny.ipynb"}
    text = notelab("runs", "show", d["run_id"][:12]).stdout
    assert "FINISHED" in text and "score" in text and "per-example tables: examples" in text
    r = notelab("runs", "show", "no-such-run")
    assert r.returncode == 1 and "no run 'no-such-run'" in r.stderr


@pytest.mark.worker
def test_rag_eval_notebook_records_what_it_used(shared, experiment):
    r = notelab("run", RAG_EVAL, "-p", "worker", shared, "-p", "n_questions", "12", "-p", "n_answers", "3",
                "--experiment", experiment, "--json")
    d = as_json(r)
    assert r.returncode == 0, d.get("error")
    assert {"recall", "mrr", "ndcg", "exact_match", "token_f1", "rougeL", "citation_hit"} <= set(d["metrics"])
    assert all(0 <= v <= 1 for v in d["metrics"].values())
    tags = MlflowClient(tracking_uri()).get_run(d["run_id"]).data.tags
    assert tags["notelab.worker"] == shared
    assert tags["notelab.model"].startswith("gemma-3-270m@")
    kb, version = tags["notelab.kb"].split("@")
    assert kb == "pydoc" and int(version) >= 1
    assert "pydoc-qa.jsonl sha256:" in tags["notelab.data"]
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["notelab.git.dirty"] in ("true", "false")
    assert tags["notelab.notebook"] == str(RAG_EVAL)


def test_rag_eval_on_the_held_out_corpus_with_fusion_parameters(experiment):
    "The standard library's docs and questions, hybrid search without the size correction; no answers (none to score)."
    r = notelab("run", RAG_EVAL, "-p", "corpus", "stdlib", "-p", "size_prior", "0", "-p", "n_answers", "0",
                "--experiment", experiment, "--json")
    d = as_json(r)
    assert r.returncode == 0, d.get("error")
    assert set(d["metrics"]) == {"recall", "mrr", "ndcg"} and d["metrics"]["recall"] >= 0.95
    assert d["params"]["corpus"] == "stdlib" and d["params"]["size_prior"] == 0
    tags = MlflowClient(tracking_uri()).get_run(d["run_id"]).data.tags
    assert tags["notelab.kb"].startswith("stdlib@") and "stdlib-qa.jsonl sha256:" in tags["notelab.data"]
    r = notelab("run", RAG_EVAL, "-p", "corpus", "nope", "-p", "n_answers", "0", "--experiment", experiment)
    assert r.returncode == 1 and "corpus 'nope': use one of pydoc, stdlib" in r.stderr


@pytest.mark.worker
def test_prompt_ab_notebooks_compare(shared, experiment):
    ids = []
    # the two arms at once, as a researcher would start them: the worker's two replicas answer both
    arms = [subprocess.Popen([NOTELAB, "run", PROMPT_AB, "-p", "worker", shared, "-p", "prompt", prompt, "-p",
                              "n_questions", "4", "-p", "k", "1", "-p", "max_tokens", "24", "--experiment", experiment,
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for prompt in ("plain", "concise")]
    try:
        for arm in arms:
            out, err = arm.communicate()
            d = as_json(subprocess.CompletedProcess(arm.args, arm.returncode, out, err))
            assert d["status"] == "FINISHED", d["error"]
            ids.append(d["run_id"])
    finally:  # one arm failed: the other is cancelled (SIGTERM ends its run KILLED), not left running
        for arm in arms:
            if arm.poll() is None:
                arm.terminate()
                arm.wait(60)
    d = as_json(notelab("compare", *ids, "--metric", "token_f1", "--json"))
    assert d["n"] == 4 and 0 <= d["p_value"] <= 1 and d["ci"][0] <= d["delta"] <= d["ci"][1]
    r = notelab("run", PROMPT_AB, "-p", "prompt", "pirate", "-p", "worker", shared, "--experiment", experiment)
    assert r.returncode == 1 and "prompt='pirate': use one of plain, concise, teacher" in r.stderr


def runs_of(experiment: str) -> list[dict]:
    "The runs of an experiment, none while it does not exist yet."
    from notelab.core import ExperimentError

    try:
        return list_runs(experiment, as_frame=False)
    except ExperimentError:
        return []


@pytest.fixture(scope="module")
def typed(tmp_path_factory) -> Path:
    "A notebook that checks the types its parameters arrive with, and can take its time."
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("lr = 0.001\nname = 'x'\nsleep = 0.0")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(
        "import time\nfrom notelab.tracking import log_metric\n"
        "assert type(lr) is float and type(name) is str, (type(lr), type(name))\n"
        "log_metric('lr', lr)\nlog_metric('name_chars', len(name))\ntime.sleep(sleep)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    f = tmp_path_factory.mktemp("typed") / "typed.ipynb"
    nbformat.write(nb, f)
    return f


def test_a_float_arrives_as_a_float_by_every_local_path(typed, experiment, tmp_path):
    "`1e-05` and friends were read back as YAML 1.1 text on the way to a run, and the run was refused."
    d = as_json(notelab("run", typed, "-p", "lr", "1e-05", "-p", "name", "🙂", "--experiment", experiment, "--json"))
    assert d["status"] == "FINISHED", d["error"]
    assert d["metrics"] == {"lr": 1e-05, "name_chars": 1.0}  # one character, not two broken surrogates
    (tmp_path / "p.yaml").write_text("lr: 1e+16\nname: '3.2e-05'\n")
    d = as_json(notelab("run", typed, "-f", tmp_path / "p.yaml", "--experiment", experiment, "--json"))
    assert d["status"] == "FINISHED" and d["metrics"]["lr"] == 1e16, d["error"]
    r = notelab("sweep", typed, "--grid", "lr=1e-05,3.2e-05,Infinity", "--experiment", experiment, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(v["lr"] for v in as_json(r)["variants"]) == [1e-05, 3.2e-05, float("inf")]
    (tmp_path / "space.yaml").write_text("lr: {low: 1e-6, high: 1e-2, log: true}\n")
    for how in (["--random", "2"], ["--optuna", "2", "--metric", "lr"]):
        r = notelab("sweep", typed, *how, "--space", tmp_path / "space.yaml", "--experiment", experiment, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert all(v["status"] == "FINISHED" and 1e-6 <= v["lr"] <= 1e-2 for v in as_json(r)["variants"])


def test_the_executing_process_uses_the_settings_of_its_submitter(typed, experiment, tmp_path):
    "A settings.ini next to the notebook must not send a run's results to another store."
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "settings.ini").write_text(f"[lab]\ndata_dir = {tmp_path / 'elsewhere'}\n")
    nb = folder / "typed.ipynb"
    nb.write_bytes(typed.read_bytes())
    d = as_json(notelab("run", nb, "--detach", "--experiment", experiment, "--json"))
    from notelab.runs import handle

    done = handle(d["run_id"]).wait(timeout=300)
    assert done.status == "FINISHED" and done.metrics["lr"] == 0.001
    assert not (tmp_path / "elsewhere").exists()


def test_cancel_a_run_and_a_sweep(typed, experiment):
    from notelab.runs import kernel_of, executor_of, get_run, list_runs

    d = as_json(notelab("run", typed, "-p", "sleep", "600", "--detach", "--experiment", experiment, "--json"))
    while kernel_of(d["run_id"]) is None:  # its kernel runs
        time.sleep(0.2)
    kernel, executor = kernel_of(d["run_id"]), executor_of(get_run(d["run_id"]))
    r = notelab("runs", "cancel", d["run_id"][:12])
    assert r.returncode == 0 and "KILLED, cancelled by a user" in r.stdout, r.stdout + r.stderr
    assert not kernel.alive() and not executor.alive()
    assert get_run(d["run_id"]).info.status == "KILLED"

    s = as_json(notelab("sweep", typed, "--grid", "name=a,b,c", "-p", "sleep", "600", "--parallel", "2", "--detach",
                        "--experiment", experiment, "--json"))
    parent = s["parent_run_id"]
    while len(list_runs(experiment, parent_run_id=parent, as_frame=False)) < 2:  # two variants run (the parent exists)
        time.sleep(0.2)
    coordinator = executor_of(get_run(parent))
    r = notelab("runs", "cancel", parent, "--json")
    assert r.returncode == 0 and as_json(r)[0]["status"] == "KILLED"
    kids = list_runs(experiment, parent_run_id=parent, as_frame=False)
    assert sorted(k["status"] for k in kids) == ["KILLED", "KILLED"]  # the third never started
    assert not coordinator.alive() and get_run(parent).data.tags["notelab.summary"] == "2 killed"


def test_a_killed_run_is_failed_when_next_read(typed, experiment):
    "A `notelab run` killed outright (SIGKILL, the OOM killer) cannot end its run; the next reader does."
    from notelab.runs import kernel_of

    p = subprocess.Popen([NOTELAB, "run", typed, "-p", "sleep", "600", "--experiment", experiment, "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    while not (rows := runs_of(experiment)) or kernel_of(rows[0]["run_id"]) is None:
        time.sleep(0.2)
    kernel = kernel_of(rows[0]["run_id"])
    p.kill()
    p.wait()
    r = as_json(notelab("runs", "show", rows[0]["run_id"], "--json"))
    assert r["status"] == "FAILED" and r["error"].startswith("process died: the executor (pid"), r
    deadline = time.monotonic() + 60  # its kernel follows its parent out (ipykernel watches it)
    while kernel.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not kernel.alive()
