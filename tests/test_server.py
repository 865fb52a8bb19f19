"""notelab's REST API in a real Jupyter server (pytest-jupyter), with the run's real worker and MLflow store."""
import asyncio
import json
import os
import re

import nbformat
import pytest
from tornado.httpclient import HTTPClientError

pytest_plugins = ["pytest_jupyter.jupyter_server"]
ENDPOINTS = [("GET", "models"), ("GET", "workers"), ("POST", "workers"), ("GET", "workers/x"),
             ("DELETE", "workers/x"), ("POST", "workers/x/scale"), ("GET", "workers/x/logs"),
             ("GET", "workers/x/metrics"), ("GET", "notebooks/parameters"), ("GET", "runs"), ("POST", "runs"),
             ("GET", "runs/x"), ("POST", "sweeps"), ("GET", "compare")]


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"notelab": True}}}


@pytest.fixture
def tiny(jp_root_dir):
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("k = 5")
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("from notelab.experiments import log_examples, log_metric\n"
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
                           body=None if body is None else (body if isinstance(body, str) else json.dumps(body)),
                           allow_nonstandard_methods=True, **kw)
    except HTTPClientError as e:
        r = e.response
    text = r.body.decode()
    try:
        return r.code, json.loads(text)
    except ValueError:
        return r.code, text


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
                              ({"replicas": 99}, "replicas", 400), ("{not json", "body", 400)]:
        code, e = await call(jp_fetch, "POST", "workers", body)
        assert (code, e["field"]) == (status, fld), (body, code, e)
    monkeypatch.setenv("NOTELAB_LIMITS_MAX_WORKERS", "1")  # the shared worker is this user's one
    code, e = await call(jp_fetch, "POST", "workers", {"name": "one-more"})
    assert code == 403 and "max_workers" in e["error"]
    code, e = await call(jp_fetch, "POST", f"workers/{shared}/scale", {"replicas": -1})
    assert code == 400 and e["field"] == "replicas"
    code, e = await call(jp_fetch, "POST", f"workers/{shared}/scale", "[1, 2]")
    assert code == 400 and e["field"] == "body"


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

    code, r = await call(jp_fetch, "POST", "runs", {"notebook": tiny, "params": {"k": 4}, "experiment": "api-test"})
    assert code == 202 and r["status"] == "RUNNING"
    for _ in range(240):
        code, run = await call(jp_fetch, "GET", f"runs/{r['run_id']}")
        if run["status"] != "RUNNING":
            break
        await asyncio.sleep(0.5)
    assert run["status"] == "FINISHED" and run["metrics"] == {"score": 8.0} and run["params"]["k"] == "4"
    code, runs = await call(jp_fetch, "GET", "runs", params={"experiment": "api-test"})
    assert code == 200 and [x["run_id"] for x in runs] == [r["run_id"]]
    # the output notebook lies under the server's root, where the lab can open it
    assert runs[0]["output_path"] == r["output_path"] and r["output_path"].startswith("notelab-runs/api-test/")
    assert (jp_root_dir / r["output_path"]).is_file()
    code, e = await call(jp_fetch, "GET", "runs/no-such-run")
    assert code == 404 and "no run 'no-such-run'" in e["error"]


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
    code, r = await call(jp_fetch, "POST", "sweeps", {"notebook": tiny, "grid": {"k": [1, 2]}, "experiment": "api-sweep",
                                                      "parallel": 2})
    assert code == 202 and r["variants"] == 2
    for _ in range(360):
        code, runs = await call(jp_fetch, "GET", "runs", params={"experiment": "api-sweep"})
        if code == 200 and len(runs) == 3 and all(x["status"] != "RUNNING" for x in runs):
            break
        await asyncio.sleep(0.5)
    parent = next(x for x in runs if not x["parent_run_id"])
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
async def test_live_figures_and_the_worker_endpoint_through_the_lab(jp_fetch, shared, jp_serverapp, jp_base_url,
                                                                    jp_http_port):
    import openai

    code, m = await call(jp_fetch, "GET", f"workers/{shared}/metrics")
    assert code == 200 and m["running"] >= 0 and m["waiting"] >= 0 and 0 <= m["kv_cache"] <= 1
    assert len(m["replicas"]) == 2
    code, e = await call(jp_fetch, "GET", "workers/nobody/metrics")
    assert code == 404
    # an OpenAI client whose API key is the lab's token, through the lab (streamed)
    base = f"http://127.0.0.1:{jp_http_port}{jp_base_url}notelab/workers/{shared}/v1"
    client = openai.AsyncOpenAI(base_url=base, api_key=jp_serverapp.identity_provider.token)
    model = (await client.models.list()).data[0].id
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}],
                                                  max_tokens=8, stream=True)
    chunks = [c async for c in stream]
    assert len(chunks) > 2 and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    code, m2 = await call(jp_fetch, "GET", f"workers/{shared}/metrics")
    assert m2["generation_tokens"] > m["generation_tokens"] and m2["tokens_per_s"] > 0
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
