"""Notebooks as tracked jobs: real papermill kernels, a real MLflow store, the run's real vLLM worker."""
import json
import subprocess
import sys
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
        "from notelab.experiments import log_metric, log_examples\n"
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
    assert run.data.params == {"k": "3", "scale": "2", "fail": "false"}  # defaults are recorded too
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
    assert row["run_id"] == d["run_id"] and row["metrics"] == {"score": 5.0} and row["params"]["k"] == "5"
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
    for prompt in ("plain", "concise"):
        d = as_json(notelab("run", PROMPT_AB, "-p", "worker", shared, "-p", "prompt", prompt, "-p", "n_questions",
                            "6", "--experiment", experiment, "--json"))
        assert d["status"] == "FINISHED", d["error"]
        ids.append(d["run_id"])
    d = as_json(notelab("compare", *ids, "--metric", "token_f1", "--json"))
    assert d["n"] == 6 and 0 <= d["p_value"] <= 1 and d["ci"][0] <= d["delta"] <= d["ci"][1]
    r = notelab("run", PROMPT_AB, "-p", "prompt", "pirate", "-p", "worker", shared, "--experiment", experiment)
    assert r.returncode == 1 and "prompt='pirate': use one of plain, concise, teacher" in r.stderr


def test_run_fills_in_a_run_created_elsewhere(tiny, experiment):
    "What a cluster Job does: the submitter created the run; `notelab run --run-id` executes and completes it."
    from notelab.experiments import check_params, start_run

    _, r = start_run(tiny, check_params(tiny, {"k": 2}), experiment=experiment)
    d = as_json(notelab("run", tiny, "-p", "k", "2", "--run-id", r.info.run_id, "--json"))
    assert d["run_id"] == r.info.run_id and d["status"] == "FINISHED" and d["metrics"] == {"score": 2.0}
    assert d["experiment"] == experiment and n_runs(experiment) == 1
    r2 = notelab("run", tiny, "--run-id", r.info.run_id)  # a finished run cannot be filled in twice
    assert r2.returncode == 1 and "is FINISHED, not RUNNING" in r2.stderr
