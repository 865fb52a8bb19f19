"""Agents and pipelines against the run's real vLLM worker: structure, not wording (the model has 270M parameters)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal

import mlflow
import pytest
from pydantic import Field
from typing_extensions import Annotated

from notelab.agents import QA, Agent, AgentError, Classifier, Critic, StepLimitError, Summarizer, tool
from notelab.datasets import PYDOC_QA, pydoc_corpus
from notelab.pipeline_files import SpecError, load_pipeline
from notelab.pipelines import FanOut, Pipeline, PipelineError, Router
from notelab.store import tracking_uri
from notelab.tracing import Trace

NOTELAB = str(Path(sys.executable).parent / "notelab")
pytestmark = pytest.mark.worker

CALLS: list[dict] = []


@tool
def lookup_topic(name: Annotated[str, Field(min_length=1, max_length=40)], limit: Annotated[int, Field(ge=1, le=5)] = 2) -> list:
    """Find reference topics whose name contains a word.

    Args:
        name: a word to look for in topic names, such as loop or class
        limit: how many topics to return
    """
    CALLS.append({"name": name, "limit": limit})
    import pydoc_data.topics

    return [t for t in pydoc_data.topics.topics if name.lower() in t.lower()][:limit]


def tool_demo(name: str, age: int, unit: Literal["km", "mi"] = "km") -> str:
    "A demo tool."
    return f"{name} {age} {unit}"


@pytest.fixture(scope="module")
def kb(shared, pydoc_kb):
    return "pydoc"  # ingested once per test process (conftest.py), shared with the RAG tests


def test_tool_call_arguments_parse_and_validate(shared):
    CALLS.clear()
    a = Agent("finder", "Find topics with the lookup_topic tool, then answer with their names.", worker=shared,
              tools=[lookup_topic], tool_choice="lookup_topic", max_steps=3, max_tokens=64)
    try:
        r = a.run("Which topics are about loops?")
        steps = r.trace.steps
    except StepLimitError as e:  # the model may keep calling the tool; every call still validated
        steps = None
        assert "used its 3 steps" in str(e)
    assert CALLS and all(1 <= len(c["name"]) <= 40 and 1 <= c["limit"] <= 5 for c in CALLS)
    if steps is not None:
        tools = [s for s in steps if s.kind == "tool"]
        assert tools and tools[0].status == "ok" and json.loads(tools[0].output) == lookup_topic.fn(**CALLS[0])


def test_invalid_arguments_go_back_to_the_model():
    t = tool(tool_demo)
    with pytest.raises(Exception, match="age"):
        t.call({"name": "x", "age": "old"})
    assert t.signature() == 'tool_demo(name: string, age: integer, unit: km|mi = "km")'


def test_step_limit(shared):
    a = Agent("stuck", worker=shared, tools=[lookup_topic], tool_choice="required", max_steps=1, max_tokens=64)
    with pytest.raises(StepLimitError, match=r"'stuck' used its 1 steps without answering; its last call was lookup_topic"):
        a.run("Find the loop topics.")


def test_agent_configuration_errors(shared):
    with pytest.raises(AgentError, match="personality 'grumpy' is not a preset"):
        Agent("a", personality="grumpy")
    with pytest.raises(AgentError, match="give at least two labels"):
        Classifier("c", labels=["only"])
    with pytest.raises(AgentError, match="give the knowledge base"):
        QA("q")
    with pytest.raises(AgentError, match="tool_choice 'nope'"):
        Agent("a", tools=[lookup_topic], tool_choice="nope")


def test_roles(shared, kb):
    qa = QA("answerer", worker=shared, kb=kb, k=3, max_tokens=64)
    a = qa.run("What does the break statement do?")
    retrieved = {s["source"] for s in a.data["sources"]}
    assert a.output and a.data["citations"] and {c["source"] for c in a.data["citations"]} <= retrieved

    labels = ["loops", "exceptions", "classes"]
    c = Classifier("topic", worker=shared, labels=labels, instructions="Which topic is the question about?")
    got = [c(q) for q in ("How do I catch an error?", "How do I stop a for loop?", "What is __init__?")]
    assert all(g in labels for g in got), got

    s = Summarizer("brief", worker=shared, context_tokens=512, max_tokens=40)
    long = Path(pydoc_corpus()[0], "with.txt").read_text()  # three parts at this context: a map and a reduce
    r = s.run(long)
    maps = [st for st in r.trace.steps if " map " in st.name]
    assert r.data["levels"] >= 1 and len(maps) >= len(s.split(long)) and r.output

    critic = Critic("checker", worker=shared)
    v = critic.run(a)
    assert v.data["verdict"] in ("ok", "revise") and v.data["revised"] == (v.data["verdict"] == "revise")
    assert {c["source"] for c in v.data["citations"]} <= retrieved
    # a revision asks the answering agent again, and it still cites what it retrieved
    data, text = qa.revise(a.data["question"], a.output, "it names no statement", Trace("t"), "x")
    assert text and {c["source"] for c in data["citations"]} <= {s["source"] for s in data["sources"]}


def test_pipeline_shapes(shared, kb):
    qa = QA("answerer", worker=shared, kb=kb, k=3, max_tokens=64)
    seq = Pipeline("review", [qa, Critic("checker", worker=shared), Summarizer("brief", worker=shared, max_tokens=40)])
    r = seq.run("When does the else clause of a while loop run?")
    paths = list(r.trace.table()["path"])
    assert [p.split("/")[0] for p in paths][:1] == ["1"] and paths[-1] == "3/brief"
    assert r.data["agent"] == "brief" and r.data["verdict"] in ("ok", "revise")

    fan = Pipeline("panel", [FanOut([QA("a1", worker=shared, kb=kb, k=2), QA("a2", worker=shared, kb=kb, k=4)],
                                    join=Summarizer("join", worker=shared, max_tokens=40))])
    r = fan.run("What does pass do?")
    assert {"1/fanout/0/a1", "1/fanout/1/a2", "1/fanout/join/join"} <= set(r.trace.table()["path"])

    words = Pipeline("words", [FanOut([Summarizer("part", worker=shared, max_tokens=24)],
                                      split=lambda text: text.split(" | "))])
    r = words.run("first part about loops | second part about classes | third part about errors")
    assert len(r.data["branches"]) == 3

    router = Router(Classifier("kind", worker=shared, labels=["question", "statement"],
                               instructions="Is the text a question or a statement?"),
                    routes={"question": qa, "statement": Summarizer("echo", worker=shared, max_tokens=24)})
    r = Pipeline("routed", [router]).run("How do I leave a loop early?")
    assert r.data["route"] in ("question", "statement")
    assert any(s.kind == "route" for s in r.trace.steps)


def test_map_many_inputs(shared, kb):
    p = Pipeline("many", [QA("answerer", worker=shared, kb=kb, k=2, max_tokens=32)])
    qs = [q["question"] for q in PYDOC_QA[:6]]
    out = p.map(qs, concurrency=3, show_progress=False)
    assert [r.data["question"] for r in out] == qs and all(r.output for r in out)


def test_trace_goes_to_mlflow_when_a_run_is_active(shared, kb):
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment("test-agent-traces")
    with mlflow.start_run() as run:
        Pipeline("traced", [QA("answerer", worker=shared, kb=kb, k=2, max_tokens=32),
                            Summarizer("brief", worker=shared, max_tokens=24)]).run("What is a lambda?")
    traces = mlflow.MlflowClient().search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id, flush=True)
    assert len(traces) == 1
    spans = traces[0].data.spans
    assert {s.name for s in spans} >= {"traced", "1/answerer", "2/brief"}


def test_yaml_pipeline_and_its_errors(shared, kb, tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"""kind: Pipeline
name: review
defaults: {{worker: {shared}, max_tokens: 48}}
agents:
  - {{name: answerer, role: qa, kb: {kb}, k: 2}}
  - {{name: checker, role: critic}}
  - {{name: kind, role: classifier, labels: [question, statement]}}
  - {{name: echo, role: custom, instructions: Repeat the text., tools: ["mytools:echo_word"]}}
steps:
  - route: kind
    routes: {{question: answerer, statement: answerer}}
  - checker
""")
    (tmp_path / "mytools.py").write_text('def echo_word(word: str) -> str:\n    "Echo a word."\n    return word\n')
    r = subprocess.run([NOTELAB, "agents", "run", ok, "--input", "What does the pass statement do?", "--json"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["output"] and d["data"]["verdict"] in ("ok", "revise")
    assert [s["path"].split("/")[0] for s in d["trace"]][0] == "1"

    bad = tmp_path / "bad.yaml"
    bad.write_text("""kind: Pipeline
name: review
agents:
  - name: answerer
    role: qa
    temprature: 0.5
  - name: kind
    role: classifier
    labels: [question]
  - name: echo
    tools: ["nowhere:fn"]
steps:
  - answerer
  - {route: echo, routes: {question: answerer}}
  - missing
""")
    r = subprocess.run([NOTELAB, "agents", "check", bad], capture_output=True, text=True)
    assert r.returncode == 1
    for line in ("bad.yaml:6: agents[0].temprature: Extra inputs are not permitted",
                 "bad.yaml:9: agents[1].labels: List should have at least 2 items",
                 "bad.yaml:11: agents[2].tools[0]: 'nowhere:fn': No module named 'nowhere'",
                 "bad.yaml:14: steps[1].route: 'echo' is a custom agent; routing needs a classifier",
                 "bad.yaml:15: steps[2]: no agent named 'missing'"):
        assert line in r.stderr, (line, r.stderr)
    (tmp_path / "syntax.yaml").write_text("kind: Pipeline\nagents: [\n")
    with pytest.raises(SpecError, match=r"syntax.yaml:3: not YAML"):
        load_pipeline(tmp_path / "syntax.yaml")


@pytest.mark.slow
def test_worker_dies_mid_pipeline():
    from notelab.workers import get_worker, launch_worker, stop_worker

    w = launch_worker(name="agents-dying", replicas=1, show_progress=False)
    try:
        def kill(value):
            for rep in get_worker(w.name, probe=False).replicas:
                os.killpg(rep.pid, signal.SIGKILL)
            return value

        p = Pipeline("dies", [Agent("first", worker=w.name, max_tokens=16), kill, Agent("second", worker=w.name,
                                                                                        max_tokens=16)])
        with pytest.raises(PipelineError, match=r"failed at step 3 \(second\)") as e:
            p.run("Say hello.")
        t = e.value.trace.table()
        assert list(t["status"]) == ["ok", "ok", "error"] and list(t["path"])[-1] == "3/second"
        assert e.value.trace.failed.error
    finally:
        stop_worker(w.name)


def test_agents_experiment_records_traces(shared, kb):
    nb = Path(__file__).parents[1] / "nbs" / "experiments" / "agents_pipeline.ipynb"
    r = subprocess.run([NOTELAB, "run", nb, "-p", "worker", shared, "-p", "n_questions", "1", "-p", "k", "1",
                        "--experiment", "test-agents", "--json"], capture_output=True, text=True)
    d = json.loads(r.stdout)
    assert r.returncode == 0, d.get("error")
    assert {"completed", "citation_precision", "revision_rate", "token_f1", "tokens_per_question"} <= set(d["metrics"])
    client = mlflow.MlflowClient(tracking_uri())
    arts = {a.path for a in client.list_artifacts(d["run_id"], "examples")}
    assert "examples/examples.jsonl" in arts and any(a.startswith("examples/trace_review") for a in arts)
    traces = client.search_traces(locations=[client.get_run(d["run_id"]).info.experiment_id], run_id=d["run_id"])
    assert len(traces) >= 1 and any(s.name.endswith("/checker") for s in traces[0].data.spans)
