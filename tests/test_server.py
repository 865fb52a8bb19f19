"""notelab's REST API in a real Jupyter server (pytest-jupyter), with the run's real worker and MLflow store."""
import asyncio
import json
import os
import re
from pathlib import Path

import httpx
import nbformat
import pytest
import yaml
from tornado.httpclient import HTTPClientError

pytest_plugins = ["pytest_jupyter.jupyter_server"]
SPEC = yaml.safe_load((Path(__file__).parents[1] / "lab_ext" / "openapi.yaml").read_text())
#: every operation of the API, from its OpenAPI file (path parameters as "x")
ENDPOINTS = [(m.upper(), re.sub(r"\{[^}]+\}", "x", p).lstrip("/")) for p, ops in SPEC["paths"].items()
             for m in ops if m in ("get", "post", "delete", "put", "patch")]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"notelab": True}}}


@pytest.fixture
def tiny(jp_root_dir):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("k = 5\nlr = 0.1\nsleep = 0.0")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("import time\nfrom notelab.tracking import log_examples, log_metric\n"
                                             "assert type(lr) is float\ntime.sleep(sleep)\n"
                                             "log_metric('score', k * 2)\n"
                                             "log_examples([{'id': f'q{i}', 'score': i * k} for i in range(6)])")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, jp_root_dir / "tiny.ipynb")
    return "tiny.ipynb"


async def call(jp_fetch, method, path, body=None, **kw):
    "(status, JSON or text) without raising on 4xx."
    if method in ("POST", "PUT") and body is None:
        body = {}
    try:
        r = await jp_fetch("notelab", "api", *path.split("/"), method=method,
                           body=None if body is None else (body if isinstance(body, (str, bytes)) else json.dumps(body)),
                           allow_nonstandard_methods=True, **kw)
    except HTTPClientError as e:
        r = e.response
    text = r.body.decode()
    try:
        return r.code, json.loads(text)
    except ValueError:
        return r.code, text


def samples(text: str, metric: str) -> list[tuple[dict, float]]:
    "The samples of one metric in Prometheus' text format, as (labels, value)."
    return [(dict(re.findall(r'(\w+)="([^"]*)"', labels)), float(v))
            for labels, v in re.findall(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.M)]


def routing_counts(text: str, worker: str) -> tuple[dict, dict]:
    "Requests routed per replica URL, and prefix-affinity results, of one worker."
    return ({lab["replica"]: n for lab, n in samples(text, "notelab_routed_requests_total") if lab["worker"] == worker},
            {lab["result"]: n for lab, n in samples(text, "notelab_prefix_affinity_total") if lab["worker"] == worker})


async def test_no_endpoint_answers_without_the_token(jp_fetch):
    for method, path in ENDPOINTS:
        code, _ = await call(jp_fetch, method, path, headers={"Authorization": "token wrong"})
        assert code == 403, (method, path, code)
    for method in ("GET", "POST"):  # nor a worker's endpoint through the lab
        try:
            r = await jp_fetch("notelab", "workers", "x", "v1", "models", method=method, body="{}" if method == "POST" else None,
                               headers={"Authorization": "Bearer wrong"})
        except HTTPClientError as e:
            r = e.response
        assert r.code == 403, (method, r.code)


async def test_models(jp_fetch):
    code, models = await call(jp_fetch, "GET", "models")
    assert code == 200 and any(m["ref"].startswith("gemma-3-270m@") for m in models)


@pytest.mark.worker
async def test_workers_logs_and_bad_launches(jp_fetch, shared, monkeypatch):
    code, ws = await call(jp_fetch, "GET", "workers")
    assert code == 200 and shared in [w["name"] for w in ws]
    code, w = await call(jp_fetch, "GET", f"workers/{shared}")
    assert code == 200 and w["state"] in ("ready", "degraded")
    code, w = await call(jp_fetch, "GET", "workers/nobody")
    assert code == 404 and "nobody" in w["error"]

    code, text = await call(jp_fetch, "GET", f"workers/{shared}/logs", params={"lines": "5"})
    assert code == 200 and 0 < len(text.splitlines()) <= 5
    code, text = await call(jp_fetch, "GET", f"workers/{shared}/logs", params={"follow": "1", "timeout": "1"})
    assert code == 200 and text
    code, e = await call(jp_fetch, "GET", f"workers/{shared}/logs", params={"replica": "9"})
    assert code == 400 and e["field"] == "replica"

    for body, fld, status in [({"replicas": "2"}, "replicas", 400), ({"model": "nope"}, "model", 400),
                              ({"name": "bad name!"}, "name", 400), ({"name": shared}, "name", 409),
                              ({"target": "mars"}, "target", 400), ({"extra_args": [1]}, "extra_args", 400),
                              ({"name": "Upper_Case"}, "name", 400), ({"extra_args": ["--port", "1"]}, "extra_args", 400),
                              ({"extra_args": ["--api-k=EVIL"]}, "extra_args", 400),
                              ({"extra_args": ["--max-num-seqz", "4"]}, "extra_args", 400),  # no such vLLM option
                              ({"target": "cluster", "extra_args": ["--hos=0.0.0.0"]}, "extra_args", 400),
                              ({"replicas": 99}, "replicas", 403), ("{not json", "body", 400)]:
        code, e = await call(jp_fetch, "POST", "workers", body)
        assert (code, e["field"]) == (status, fld), (body, code, e)
    monkeypatch.setenv("NOTELAB_LIMITS_MAX_WORKERS", "1")  # the shared worker is this user's one
    code, e = await call(jp_fetch, "POST", "workers", {"name": "one-more"})
    assert code == 403 and "max_workers" in e["error"]
    code, e = await call(jp_fetch, "POST", f"workers/{shared}/scale", {"replicas": -1})
    assert code == 400 and e["field"] == "replicas"
    code, e = await call(jp_fetch, "POST", f"workers/{shared}/scale", "[1, 2]")
    assert code == 400 and e["field"] == "body"
    # a name from the URL is a worker name, or nothing happens (it never reaches a path)
    for method, path in [("DELETE", "workers/..%2F..%2Fvictim"), ("GET", "workers/%2Ftmp"), ("GET", "workers/Upper")]:
        code, e = await call(jp_fetch, method, path)
        assert (code, e["field"]) == (400, "name"), (path, code, e)


async def test_runs_from_the_api(jp_fetch, tiny, jp_root_dir):
    code, p = await call(jp_fetch, "GET", "notebooks/parameters", params={"path": tiny})
    assert code == 200 and p["k"]["default"] == 5
    code, e = await call(jp_fetch, "GET", "notebooks/parameters", params={"path": "../outside.ipynb"})
    assert code == 400 and e["field"] == "path"

    code, e = await call(jp_fetch, "POST", "runs", {"notebook": tiny, "params": {"kk": 1}})
    assert code == 400 and e["field"] == "params.kk"
    code, e = await call(jp_fetch, "POST", "runs", {"notebook": "../../etc/passwd"})
    assert code == 400 and e["field"] == "notebook"
    code, e = await call(jp_fetch, "POST", "runs", {})
    assert code == 400 and e["field"] == "notebook"

    code, r = await call(jp_fetch, "POST", "runs", {"notebook": tiny, "params": {"k": 4, "lr": 1e-05},
                                                    "experiment": "api-test"})
    assert code == 202 and r["status"] == "RUNNING"
    run = await finished(jp_fetch, r["run_id"])
    assert run["status"] == "FINISHED" and run["metrics"] == {"score": 8.0}, run  # lr arrived as a float
    assert run["params"]["k"] == 4 and run["params"]["lr"] == 1e-05  # with their types
    code, runs = await call(jp_fetch, "GET", "runs", params={"experiment": "api-test"})
    assert code == 200 and [x["run_id"] for x in runs] == [r["run_id"]]
    # the output notebook lies under the server's root, where the lab can open it
    assert runs[0]["output_path"] == r["output_path"] and r["output_path"].startswith("notelab-runs/api-test/")
    assert (jp_root_dir / r["output_path"]).is_file()
    code, e = await call(jp_fetch, "GET", "runs/no-such-run")
    assert code == 404 and "no run 'no-such-run'" in e["error"]
    code, e = await call(jp_fetch, "GET", "runs", params={"limit": "-1"})
    assert (code, e["field"]) == (400, "limit")

    # the Stop button: a run that would sleep ten minutes ends KILLED, keeping what it wrote
    code, r = await call(jp_fetch, "POST", "runs", {"notebook": tiny, "params": {"sleep": 600}, "experiment": "api-test"})
    assert code == 202
    code, stopped = await call(jp_fetch, "POST", f"runs/{r['run_id']}/cancel")
    assert code == 200 and stopped["status"] == "KILLED" and stopped["error"] == "cancelled by a user", stopped
    code, e = await call(jp_fetch, "POST", "runs/no-such-run/cancel")
    assert code == 404


async def finished(jp_fetch, run_id: str, within: float = 900) -> dict:
    "Poll a run until it has ended (a run that never ends fails the test, after `within` seconds)."
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        code, run = await call(jp_fetch, "GET", f"runs/{run_id}")
        assert code == 200, run
        if run["status"] != "RUNNING":
            return run
        await asyncio.sleep(0.5)
    raise AssertionError(f"run {run_id} still RUNNING after {within} s: {run}")


async def ingested(jp_fetch, job: dict, within: float = 600) -> dict:
    "Poll an ingest job until it has ended."
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        code, j = await call(jp_fetch, "GET", f"knowledge/{job['kb']}/jobs/{job['id']}")
        assert code == 200, j
        if j["state"] != "running":
            return j
        await asyncio.sleep(0.2)
    raise AssertionError(f"ingest {job['id']} still running after {within} s: {j}")


def multipart(*files: tuple[str, bytes]) -> tuple[bytes, dict]:
    "A multipart/form-data body with each file under the field `file`, and its Content-Type header."
    req = httpx.Request("POST", "http://x", files=[("file", f) for f in files])
    return req.read(), {"Content-Type": req.headers["content-type"]}


async def test_knowledge_from_the_api(jp_fetch, jp_root_dir, monkeypatch):
    "The Knowledge panel's calls: create, upload (one file unreadable), add from the root, search, read, remove, drop."
    monkeypatch.setenv("NOTELAB_LIMITS_MAX_UPLOAD_MB", "1")
    name = f"api-{os.getpid()}"
    code, kb = await call(jp_fetch, "POST", "knowledge", {"name": name})
    assert code == 201 and (kb["name"], kb["chunks"], kb["sources"]) == (name, 0, []), kb
    code, e = await call(jp_fetch, "POST", "knowledge", {"name": name})
    assert (code, e["field"]) == (409, "name")
    code, e = await call(jp_fetch, "POST", "knowledge", {"name": "../up"})
    assert (code, e["field"]) == (400, "name")

    body, headers = multipart(("loops.md", b"# Loops\n\nbreak leaves a loop early; continue skips to the next item."),
                              ("scan.pdf", b"%PDF-1.4 not really a pdf"))
    code, job = await call(jp_fetch, "POST", f"knowledge/{name}/files", body, headers=headers)
    assert code == 202 and job["files"] == ["loops.md", "scan.pdf"], job
    j = await ingested(jp_fetch, job)
    assert j["state"] == "done" and j["report"]["added"] == ["loops.md"] and list(j["report"]["failed"]) == ["scan.pdf"], j
    (jp_root_dir / "docs").mkdir()
    (jp_root_dir / "docs" / "files.md").write_text("# Files\n\nopen() reads a file; a with block closes it again.")
    code, job = await call(jp_fetch, "POST", f"knowledge/{name}/ingest", {"paths": ["docs/files.md"]})
    assert code == 202
    assert (await ingested(jp_fetch, job))["report"]["added"] == ["docs/files.md"]
    code, kb = await call(jp_fetch, "GET", f"knowledge/{name}")
    assert code == 200 and kb["documents"] == 2 and kb["job"]["id"] == job["id"]
    assert {s["source"]: (s["path"], s["uploaded"]) for s in kb["sources"]} == {
        "loops.md": (None, True), "docs/files.md": ("docs/files.md", False)}

    code, hits = await call(jp_fetch, "GET", f"knowledge/{name}/search", params={"q": "how do I leave a loop", "k": "2"})
    assert code == 200 and hits[0]["source"] == "loops.md" and hits[0]["loc"]["line"] >= 1, hits
    code, src = await call(jp_fetch, "GET", f"knowledge/{name}/source", params={"source": "loops.md"})
    assert code == 200 and "break leaves a loop early" in src["sections"][0]["text"]

    # refused, each naming the field, and nothing written
    big, headers = multipart(("big.txt", b"x" * (2 ** 20 + 1)))
    code, e = await call(jp_fetch, "POST", f"knowledge/{name}/files", big, headers=headers)
    assert (code, e["field"]) == (413, "file") and "max_upload_mb" in e["error"]
    sneaky, headers = multipart(("../../.bashrc", b"echo hi"))
    code, e = await call(jp_fetch, "POST", f"knowledge/{name}/files", sneaky, headers=headers)
    assert (code, e["field"]) == (400, "file")
    code, e = await call(jp_fetch, "POST", f"knowledge/{name}/ingest", {"paths": ["../outside"]})
    assert (code, e["field"]) == (400, "paths[0]")
    code, e = await call(jp_fetch, "GET", f"knowledge/{name}/search", params={"q": "x", "mode": "psychic"})
    assert (code, e["field"]) == (400, "mode")
    code, e = await call(jp_fetch, "GET", "knowledge/ghost/search", params={"q": "x"})
    assert (code, e["field"]) == (404, "kb")
    uploads = Path(os.environ["NOTELAB_LAB_DATA_DIR"]) / "uploads" / name
    assert sorted(p.name for p in uploads.iterdir()) == ["loops.md", "scan.pdf"]

    code, r = await call(jp_fetch, "DELETE", f"knowledge/{name}/source", params={"source": "loops.md"})
    assert code == 200 and r["chunks"] == 1 and not (uploads / "loops.md").exists()
    code, r = await call(jp_fetch, "DELETE", f"knowledge/{name}")
    assert code == 200 and not uploads.exists()
    code, kbs = await call(jp_fetch, "GET", "knowledge")
    assert code == 200 and name not in [k["name"] for k in kbs]


def figures(worker: str) -> tuple[float, float, float]:
    "(requests running, requests finished, tokens generated) over the worker's ready replicas, from vLLM's /metrics."
    from notelab.workers import get_worker

    running = finished = tokens = 0.0
    for r in get_worker(worker).ready:
        text = httpx.get(r.base_url.removesuffix("/v1") + "/metrics", timeout=30).text
        running += sum(v for _, v in samples(text, "vllm:num_requests_running"))
        finished += sum(v for _, v in samples(text, "vllm:request_success_total"))  # stop, length, ... (not abort)
        tokens += sum(v for _, v in samples(text, "vllm:generation_tokens_total"))
    return running, finished, tokens


@pytest.mark.worker
async def test_chat_streams_and_stops_when_the_browser_goes_away(jp_fetch, shared, jp_http_port, jp_base_url,
                                                                  jp_serverapp):
    "POST chat: bad turns are refused naming the field; an answer streams as events; a client that leaves stops it."
    code, e = await call(jp_fetch, "POST", "chat", {"worker": shared, "messages": [{"role": "assistant", "content": "x"}]})
    assert (code, e["field"]) == (400, "messages")
    code, e = await call(jp_fetch, "POST", "chat", {"worker": "nobody", "messages": [{"role": "user", "content": "q"}]})
    assert code == 404 and "nobody" in e["error"]
    code, e = await call(jp_fetch, "POST", "chat", {"worker": shared, "kb": "ghost",
                                                    "messages": [{"role": "user", "content": "q"}]})
    assert (code, e["field"]) == (404, "kb")
    code, e = await call(jp_fetch, "POST", "chat", {"worker": shared, "max_tokens": 8, "min_tokens": 9,
                                                    "messages": [{"role": "user", "content": "q"}]})
    assert (code, e["field"]) == (400, "min_tokens")
    code, text = await call(jp_fetch, "POST", "chat", {"worker": shared, "max_tokens": 8,
                                                       "messages": [{"role": "user", "content": "Say hello."}]})
    assert code == 200 and text.startswith("event: ") and "event: done" in text, text
    # a client that goes away after the first words: the worker stops generating (the request neither finishes
    # nor goes on: vLLM aborts it, and does not count it as finished)
    _, finished, tokens = figures(shared)
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}notelab/api/chat"
    # min_tokens: the model may not end the answer itself before the client leaves (a small model sampled at
    # the worker's default temperature once stopped after 27 tokens, and the request counted as finished)
    body = {"worker": shared, "max_tokens": 1500, "min_tokens": 1500, "temperature": 0, "messages": [
        {"role": "user", "content": "Write the numbers from 1 to 1000, separated by commas: 1, 2, 3, 4, 5, 6,"}]}
    async with httpx.AsyncClient(timeout=120) as http:
        async with http.stream("POST", url, json=body,
                               headers={"Authorization": f"token {jp_serverapp.identity_provider.token}"}) as r:
            assert r.status_code == 200
            seen = 0
            async for line in r.aiter_lines():
                seen += line.startswith("event: text")
                if seen >= 3:
                    break  # and close the connection
    deadline = asyncio.get_running_loop().time() + 60
    while (now := figures(shared))[0] > 0:
        assert asyncio.get_running_loop().time() < deadline, "the worker went on generating for a client that left"
        await asyncio.sleep(0.5)
    assert now[1] == finished and now[2] - tokens < 200, (finished, tokens, now)


@pytest.mark.worker
async def test_chat_through_an_agent_pipeline(jp_fetch, shared, jp_root_dir):
    "A pipeline file under the lab's root answers a chat turn on the chosen worker; a bad one is refused with its line."
    flows = jp_root_dir / "flows"
    flows.mkdir()
    (flows / "brief.yaml").write_text("kind: Pipeline\nname: brief\ndefaults: {max_tokens: 16}\nagents:\n"
                                      "  - {name: answerer, role: custom, instructions: Answer in one short sentence.}\n"
                                      "steps:\n  - answerer\n")
    (flows / "broken.yaml").write_text("kind: Pipeline\nname: broken\nagents:\n  - {name: a, role: qa}\nsteps: [a]\n")
    (flows / "notes.yaml").write_text("kind: Notes\n")
    code, listed = await call(jp_fetch, "GET", "chat/pipelines")
    assert code == 200 and listed == [{"path": "flows/brief.yaml", "name": "brief"},
                                      {"path": "flows/broken.yaml", "name": "broken"}], listed
    ask = {"worker": shared, "messages": [{"role": "user", "content": "What is a pipeline?"}]}
    code, e = await call(jp_fetch, "POST", "chat", {**ask, "pipeline": "flows/broken.yaml"})
    assert (code, e["field"]) == (400, "pipeline") and "broken.yaml:4" in e["error"], e
    code, e = await call(jp_fetch, "POST", "chat", {**ask, "pipeline": "../flows/brief.yaml"})
    assert (code, e["field"]) == (400, "pipeline"), e
    code, e = await call(jp_fetch, "POST", "chat", {**ask, "pipeline": "flows/brief.yaml", "kb": "papers"})
    assert (code, e["field"]) == (400, "pipeline") and "not both" in e["error"], e
    code, text = await call(jp_fetch, "POST", "chat", {**ask, "pipeline": "flows/brief.yaml"})
    assert code == 200 and "event: done" in text, text
    done = json.loads(text.split("event: done\ndata: ")[1].split("\n")[0])
    assert [(s["path"], s["status"]) for s in done["steps"] if s["kind"] == "llm"][:1] == [("1/answerer", "ok")], done
    assert done["usage"]["completion_tokens"] > 0
    # the answer streamed as the worker wrote it (a piece per token or so), and the pieces make the answer
    pieces = [json.loads(b.split("data: ", 1)[1])["text"] for b in text.split("\n\n") if b.startswith("event: text")]
    assert "".join(pieces).strip() == done["output"] and done["output"], (pieces, done)
    assert len(pieces) > 1 or done["usage"]["completion_tokens"] == 1, pieces


def test_openapi_follows_the_rules():
    "The API's documented patterns and enums are the library's rules, not copies that drift."
    from pathlib import Path

    import yaml
    from notelab.rules import STORE_NAME, TARGETS, WORKER_NAME

    doc = yaml.safe_load((Path(__file__).parents[1] / "lab_ext" / "openapi.yaml").read_text())
    schemas = doc["components"]["schemas"]
    assert schemas["WorkerName"]["pattern"] == WORKER_NAME.pattern
    assert schemas["Target"]["enum"] == list(TARGETS)
    assert schemas["KnowledgeBaseName"]["pattern"] == STORE_NAME.pattern
    params = doc["components"]["parameters"]
    assert params["name"]["schema"] == {"$ref": "#/components/schemas/WorkerName"}


async def test_rules_from_the_api(jp_fetch, monkeypatch):
    from notelab.rules import WORKER_NAME

    monkeypatch.setenv("NOTELAB_LIMITS_MAX_REPLICAS", "3")
    code, rules = await call(jp_fetch, "GET", "rules")
    assert code == 200 and rules["worker_name"] == WORKER_NAME.pattern and rules["max_replicas"] == 3


def test_openapi_documents_every_route():
    from pathlib import Path

    import yaml
    from notelab.server import ROUTES

    doc = yaml.safe_load((Path(__file__).parents[1] / "lab_ext" / "openapi.yaml").read_text())
    routes = {"/" + p.replace("([^/]+)", "{x}") for p, _ in ROUTES}
    documented = {re.sub(r"\{[^}]+\}", "{x}", p) for p in doc["paths"]}
    assert routes == documented
    for p, h in ROUTES:
        methods = {m for m in ("get", "post", "delete", "put", "patch") if m in h.__dict__}
        path = next(d for d in doc["paths"] if re.sub(r"\{[^}]+\}", "{x}", d) == "/" + p.replace("([^/]+)", "{x}"))
        assert methods == set(doc["paths"][path]) - {"parameters"}, p


async def test_sweeps_from_the_api(jp_fetch, tiny):
    for body, fld in [({"notebook": tiny}, "grid"), ({"notebook": tiny, "grid": {"k": 3}}, "grid.k"),
                      ({"notebook": tiny, "grid": {"k": []}}, "grid.k"), ({"notebook": tiny, "grid": {"kk": [1]}}, "grid.kk"),
                      ({"notebook": tiny, "grid": {"k": [1, "x"]}}, "grid.k"),
                      ({"notebook": tiny, "grid": {"k": [1]}, "parallel": 0}, "parallel"),
                      ({"notebook": "nope.ipynb", "grid": {"k": [1]}}, "notebook")]:
        code, e = await call(jp_fetch, "POST", "sweeps", body)
        assert (code, e["field"]) == (400, fld), (body, e)
    code, r = await call(jp_fetch, "POST", "sweeps", {"notebook": tiny, "grid": {"k": [1, 2], "lr": [1e-05]},
                                                      "experiment": "api-sweep", "parallel": 2})
    assert code == 202 and r["variants"] == 2 and r["status"] == "RUNNING"
    assert (await finished(jp_fetch, r["run_id"]))["status"] == "FINISHED"
    code, runs = await call(jp_fetch, "GET", "runs", params={"experiment": "api-sweep"})
    parent = next(x for x in runs if not x["parent_run_id"])
    assert parent["run_id"] == r["run_id"] and len(runs) == 3
    variants = [x for x in runs if x["parent_run_id"] == parent["run_id"]]
    assert parent["status"] == "FINISHED" and sorted(x["metrics"]["score"] for x in variants) == [2.0, 4.0], runs

    # the two variants compared on their per-example scores, as `notelab compare` does
    a, b = sorted(variants, key=lambda x: x["metrics"]["score"])
    code, c = await call(jp_fetch, "GET", "compare", params={"a": a["run_id"], "b": b["run_id"][:12], "metric": "score"})
    assert code == 200, c
    assert (c["a"], c["b"], c["n"], c["delta"], c["b_better"], c["a_better"]) == (a["run_id"], b["run_id"], 6, 2.5, 5, 0)
    assert c["ci"][0] <= 2.5 <= c["ci"][1] and 0 < c["p_value"] < 1 and c["key"] == "id"
    assert c["pairs"][0] == {"key": "q5", "a": 5.0, "b": 10.0, "diff": 5.0}  # the largest change first
    assert c["plot"].startswith("data:image/png;base64,") and c["name_a"] == a["name"]
    for params, fld, status in [({"a": "nobody", "b": b["run_id"], "metric": "score"}, "a", 404),
                                ({"a": a["run_id"], "metric": "score"}, "b", 400),
                                ({"a": a["run_id"], "b": b["run_id"], "metric": "nope"}, "metric", 400),
                                ({"a": a["run_id"], "b": b["run_id"], "metric": "score", "confidence": "2"}, "confidence", 400)]:
        code, e = await call(jp_fetch, "GET", "compare", params=params)
        assert (code, e["field"]) == (status, fld), (params, e)
    assert "numeric columns: score" in (await call(jp_fetch, "GET", "compare", params={
        "a": a["run_id"], "b": b["run_id"], "metric": "nope"}))[1]["error"]


@pytest.mark.worker
async def test_updates_are_checked_before_anything_rolls(jp_fetch, shared):
    "A bad update or rollback is refused at once, naming the field; the worker serves as it did."
    code, before = await call(jp_fetch, "GET", f"workers/{shared}")
    for body, fld in [({}, "model"), ({"model": "no-such-model@1"}, "model"), ({"model": 7}, "model"),
                      ({"extra_args": "--x"}, "extra_args"), ({"extra_args": ["--api-key", "k"]}, "extra_args")]:
        code, e = await call(jp_fetch, "POST", f"workers/{shared}/update", body)
        assert (code, e["field"]) == (400, fld), (body, e)
    code, e = await call(jp_fetch, "POST", "workers/nobody/update", {"model": "gemma-3-270m"})
    assert code == 404
    code, h = await call(jp_fetch, "GET", f"workers/{shared}/history")
    assert code == 200 and h[0]["event"] == "launch" and h[-1]["model"] == before["model"]
    if len([x for x in h if x["event"] != "failed"]) == 1:  # (this run's rollout test may have run before)
        code, e = await call(jp_fetch, "POST", f"workers/{shared}/rollback")
        assert code == 400 and "nothing to roll back to" in e["error"]
    code, after = await call(jp_fetch, "GET", f"workers/{shared}")
    assert [r["pid"] for r in after["replicas"]] == [r["pid"] for r in before["replicas"]]


@pytest.mark.worker
async def test_live_figures_and_the_worker_endpoint_through_the_lab(jp_fetch, shared, jp_serverapp, jp_base_url,
                                                                    jp_http_port):
    import openai

    code, m = await call(jp_fetch, "GET", f"workers/{shared}/metrics")
    assert code == 200 and m["running"] >= 0 and m["waiting"] >= 0 and 0 <= m["kv_cache"] <= 1
    assert len(m["replicas"]) == 2
    code, e = await call(jp_fetch, "GET", "workers/nobody/metrics")
    assert code == 404
    # routing counts are per process (earlier tests routed too, to replicas since replaced): compare with these
    code, text = await call(jp_fetch, "GET", "metrics")
    routed0, affinity0 = routing_counts(text, shared)
    # an OpenAI client whose API key is the lab's token, through the lab (streamed)
    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url}notelab/workers/{shared}/v1"
    client = openai.AsyncOpenAI(base_url=base, api_key=jp_serverapp.identity_provider.token)
    model = (await client.models.list()).data[0].id
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}],
                                                  max_tokens=8, stream=True,
                                                  extra_body={"min_tokens": 4})  # a base model may stop at once
    chunks = [c async for c in stream]
    assert len(chunks) > 2 and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    code, m2 = await call(jp_fetch, "GET", f"workers/{shared}/metrics")
    assert m2["generation_tokens"] > m["generation_tokens"] and m2["tokens_per_s"] > 0
    # two prompts that share a long beginning: the second goes where the first went (prefix affinity)
    passage = "Answer from this passage of the reference. " * 20
    for q in ("What is a list?", "What is a dict?"):
        await client.completions.create(model=model, prompt=passage + q, max_tokens=1)
    # the proxy's routing, counted for Prometheus, to the shared worker's replicas
    code, text = await call(jp_fetch, "GET", "metrics")
    assert code == 200
    routed, affinity = routing_counts(text, shared)
    went = {u for u, n in routed.items() if n > routed0.get(u, 0)}
    assert sum(routed.values()) - sum(routed0.values()) >= 4, text  # models, chat, and the two completions
    assert went and went <= {r["base_url"] for r in (await call(jp_fetch, "GET", f"workers/{shared}"))[1]["replicas"]}
    assert affinity.get("miss", 0) > affinity0.get("miss", 0) and affinity.get("hit", 0) > affinity0.get("hit", 0)
    # the Grafana dashboard in k8s/ asks for vLLM figures this vLLM serves
    dash = json.loads((Path(__file__).parents[1] / "k8s/components/monitoring/notelab-dashboard.json").read_text())
    replica = (await call(jp_fetch, "GET", f"workers/{shared}"))[1]["replicas"][0]["base_url"]
    served = set(re.findall(r"^(vllm:\w+?)(?:_total|_bucket|_count|_sum)?[{ ]", httpx.get(replica[:-3] + "/metrics").text,
                            re.M))
    wanted = {m.removesuffix("_total") for m in re.findall(r"\b(vllm:\w+?)(?:_bucket)?\b", json.dumps(dash))}
    assert wanted and wanted <= served, wanted - served
    with pytest.raises(openai.PermissionDeniedError):  # the lab's auth, before any worker is asked
        await openai.AsyncOpenAI(base_url=base, api_key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        await openai.AsyncOpenAI(base_url=base.replace(shared, "nobody"),
                                 api_key=jp_serverapp.identity_provider.token).models.list()


async def test_cluster_workers_from_the_api(jp_fetch, tmp_path, monkeypatch):
    """Launch, list, scale, read logs of and stop a cluster worker through the API, against kmock's emulator."""
    from k8s_emulator import Emulator
    from kubernetes import client

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))  # no cluster: a launch names the target
    monkeypatch.setenv("NOTELAB_CLUSTER_NAMESPACE", "lab")
    code, e = await call(jp_fetch, "POST", "workers", {"target": "cluster", "name": "chat"})
    assert (code, e["field"]) == (400, "target") and "KUBECONFIG" in e["error"]
    with Emulator() as k8s:
        monkeypatch.setenv("KUBECONFIG", k8s.kubeconfig(tmp_path / "kubeconfig"))
        for body, fld, status in [({"name": "Not_DNS"}, "name", 400), ({"gpus_per_replica": 99}, "gpus_per_replica", 403)]:
            code, e = await call(jp_fetch, "POST", "workers", {"target": "cluster", **body})
            assert (code, e["field"]) == (status, fld), e
        code, w = await call(jp_fetch, "POST", "workers", {"target": "cluster", "name": "chat", "gpus_per_replica": 1})
        assert code == 202 and (w["state"], w["target"]) == ("starting", "cluster")
        admin = client.CoreV1Api(k8s.client("admin"))
        admin.create_namespaced_pod("lab", {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "chat-a", "namespace": "lab", "labels": {"app.kubernetes.io/instance": "chat",
                                                              "app.kubernetes.io/component": "worker"}},
            "spec": {"containers": [{"name": "vllm", "image": "x"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                           "reason": "Unschedulable",
                                                           "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}})
        code, ws = await call(jp_fetch, "GET", "workers")
        c = next(w for w in ws if w["name"] == "chat")
        assert c["target"] == "cluster" and c["state"] == "unschedulable" and "nvidia.com/gpu" in c["error"]
        k8s.logs[("lab", "chat-a")] = "INFO: loading model\n"
        code, text = await call(jp_fetch, "GET", "workers/chat/logs", params={"target": "cluster"})
        assert code == 200 and "loading model" in text
        code, w = await call(jp_fetch, "POST", "workers/chat/scale", {"replicas": 2, "target": "cluster"})
        assert code == 200 and w["desired"] == 2
        code, r = await call(jp_fetch, "DELETE", "workers/chat", params={"target": "cluster"})
        assert code == 200
        code, ws = await call(jp_fetch, "GET", "workers")
        assert "chat" not in [w["name"] for w in ws]


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.no_extra_replica
async def test_a_killed_replica_loses_no_request_through_the_lab_or_connect(jp_fetch, shared, jp_serverapp,
                                                                           jp_base_url, jp_http_port):
    """One routing policy: requests through the lab's endpoint and through `notelab.connect` both survive the
    death of a replica mid-load; the registry notices, and scaling brings the replica back."""
    import json as _json
    import os
    import signal
    import subprocess
    import sys
    import threading
    from pathlib import Path

    import openai

    import notelab
    from notelab.workers import get_worker, scale_worker

    victim = get_worker(shared).replicas[0]
    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url}notelab/workers/{shared}/v1"
    lab = openai.AsyncOpenAI(base_url=base, api_key=jp_serverapp.identity_provider.token)
    model = get_worker(shared).served_names[0]
    gate = asyncio.Semaphore(8)

    async def one(i):
        async with gate:
            r = await lab.completions.create(model=model, prompt=f"Write the number {i} in words.", max_tokens=24)
            return r.choices[0].text

    direct = []
    t = threading.Thread(target=lambda: direct.extend(notelab.connect(shared).batch(
        [f"Write the number {i} in words." for i in range(16)], concurrency=8, max_tokens=24, show_progress=False,
        return_exceptions=True)))
    through_lab = asyncio.ensure_future(asyncio.gather(*(one(i) for i in range(16)), return_exceptions=True))
    t.start()
    await asyncio.sleep(1.5)  # under load
    os.killpg(victim.pid, signal.SIGKILL)
    answers = await through_lab
    await asyncio.get_running_loop().run_in_executor(None, t.join)
    assert len(answers) == 16 and all(isinstance(a, str) for a in answers), answers
    assert len(direct) == 16 and all(isinstance(a, str) for a in direct), direct
    # SIGKILL is asynchronous: a vLLM process with a large KV cache takes a moment to be gone
    while _running(victim.pid):
        await asyncio.sleep(0.2)
    # the registry notices, also from a fresh process
    notelab_cli = str(Path(sys.executable).parent / "notelab")
    r = subprocess.run([notelab_cli, "worker", "ls", "--json"], capture_output=True, text=True, check=True)
    w = next(w for w in _json.loads(r.stdout) if w["name"] == shared)
    assert w["state"] == "degraded" and sorted(x["state"] for x in w["replicas"]) == ["dead", "ready"]
    # scaling back starts a replica; meanwhile nothing waits on the registry (a DELETE waited 71 s for it)
    from notelab.workers import _lock

    scaling = asyncio.get_running_loop().run_in_executor(None, lambda: scale_worker(shared, 2, show_progress=False))
    while not any(x.state == "starting" for x in get_worker(shared).replicas):
        await asyncio.sleep(0.2)
    registry = _lock()
    registry.acquire(timeout=10)  # raises filelock.Timeout while a start holds it
    registry.release()
    code, ws = await call(jp_fetch, "GET", "workers")
    assert code == 200 and next(x for x in ws if x["name"] == shared)["state"] == "degraded"
    w = await scaling
    assert w.state == "ready" and len(w.replicas) == 2 and victim.pid not in {x.pid for x in w.replicas}
    assert victim.tmp_dir and not Path(victim.tmp_dir).exists()  # the killed replica's temporary files went with it


@pytest.mark.worker
@pytest.mark.parametrize("how", ["hung", "refused"])
async def test_a_hung_or_refused_cluster_does_not_hold_up_the_local_workers(jp_fetch, shared, tmp_path, monkeypatch, how):
    "The cluster's API accepts and never answers, or refuses: GET /workers still lists the local workers, at once."
    import socket

    import yaml

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if how == "hung":
        sock.listen(16)  # connections are accepted by the kernel and then nothing is ever said
    else:
        sock.close()  # nothing listens there
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "x"}}], "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    code, ws = await asyncio.wait_for(call(jp_fetch, "GET", "workers"), 30)  # (without timeouts it waited forever)
    attempts = 0
    if how == "hung":  # the connections the lab opened: one try (with a second's timeout), no retries
        sock.setblocking(False)
        while True:
            try:
                sock.accept()[0].close()
                attempts += 1
            except BlockingIOError:
                break
    sock.close()
    assert code == 200 and shared in [w["name"] for w in ws if w["target"] == "local"]
    gone = [w for w in ws if w["target"] == "cluster"]
    assert len(gone) == 1 and gone[0]["state"] == "unreachable" and "cluster unreachable" in gone[0]["error"], gone
    # (not a time limit: one of 2 s failed on a loaded machine, 2.6 s)
    assert attempts == (1 if how == "hung" else 0), attempts


def test_dependencies_exclude_releases_with_known_advisories():
    "pyproject's minimums leave out jupyter_server < 2.18, jupyter-server-proxy < 4.1.1 and MLflow 2.x."
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement

    deps = {Requirement(d).name.lower().replace("_", "-"): Requirement(d).specifier for d in
            tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, bad, good in [("jupyter-server", "2.17.9", "2.18.0"), ("jupyter-server-proxy", "4.1.0", "4.1.1"),
                            ("mlflow", "2.22.2", "3.0.0")]:
        assert name in deps and bad not in deps[name] and good in deps[name], (name, deps.get(name))


@pytest.mark.worker
async def test_the_lab_caps_n_and_max_tokens(jp_fetch, shared, jp_serverapp, jp_base_url, jp_http_port):
    "An unbounded n (vLLM CVE-2026-34756) or max_tokens never reaches a worker through the lab."
    import httpx

    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url}notelab/workers/{shared}/v1"
    auth = {"Authorization": f"Bearer {jp_serverapp.identity_provider.token}"}
    async with httpx.AsyncClient(timeout=60) as c:
        for body, fld in [({"n": 100000}, "n"), ({"max_tokens": 10**9}, "max_tokens"), ({"n": "2"}, "n")]:
            r = await c.post(f"{base}/completions", json={"model": "x", "prompt": "hi", **body}, headers=auth)
            assert (r.status_code, r.json()["field"]) == (400, fld), r.text
        r = await c.get(f"{base}/../../metrics", headers=auth)  # only the OpenAI paths a client needs
        assert r.status_code in (400, 404)
        r = await c.get(f"{base}/tokenize", headers=auth)
        assert r.status_code == 404 and r.json()["field"] == "path"
