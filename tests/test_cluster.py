"""Cluster workers and runs: manifests against the API's schemas, calls against kmock's API emulator.

No cluster runs here. Every rendered object and every document the k8s/ overlays produce is checked
with kubernetes-validate (strict); the launcher's calls go over HTTP to an emulated API server, and the
Role in k8s/base/rbac.yaml must grant exactly the verbs and resources those calls used.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from k8s_emulator import Emulator
from serving import answers, until_serving
from notelab.cluster import (ClusterError, ClusterWorkers, ClusterWorkerSpec, render_job, render_worker, to_yaml,
                             validate)
from notelab.core import LimitError, NotelabError, WorkerNotFoundError

ROOT = Path(__file__).resolve().parents[1]
NOTELAB = str(Path(sys.executable).parent / "notelab")
NS = "lab"
LAUNCHER, ADMIN = "notelab-launcher-test", "cluster-admin-test"


def kustomize(overlay: str) -> list[dict]:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (for `kubectl kustomize`) is not on this machine")
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], capture_output=True,
                         text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def pod_specs(objs):
    for o in objs:
        if o["kind"] in ("Deployment", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def assert_restricted(name, spec):
    "The Pod Security 'restricted' profile, field by field."
    pod = spec.get("securityContext", {})
    assert pod.get("runAsNonRoot") is True and pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, (name, c["name"])
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], (name, c["name"])
    assert not any("hostPath" in v for v in spec.get("volumes", [])), name


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_rendered_worker_validates(gpus):
    spec = ClusterWorkerSpec("chat", "gemma-3-270m@1", replicas=2, gpus=gpus, namespace=NS,
                             autoscale={"max": 4, "prometheus": "http://prometheus:9090"})
    objs = render_worker(spec)
    assert [o["kind"] for o in objs] == ["Secret", "Deployment", "Service", "ScaledObject"]
    validate(objs)
    c = objs[1]["spec"]["template"]["spec"]["containers"][0]
    assert ("nvidia.com/gpu" in c["resources"]["limits"]) == bool(gpus)
    assert ("--tensor-parallel-size" in c["args"]) == (gpus > 1)
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1200
    vols = {v["name"]: v for v in objs[1]["spec"]["template"]["spec"]["volumes"]}
    assert vols["shm"]["emptyDir"]["medium"] == "Memory" and "persistentVolumeClaim" in vols["models"]
    assert_restricted("worker", objs[1]["spec"]["template"]["spec"])
    assert "vllm:num_requests_waiting" in objs[3]["spec"]["triggers"][0]["metadata"]["query"]
    # no API token in a worker's pod, and a store model is mounted read-only (a Hugging Face id needs the cache)
    assert objs[1]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert next(m for m in c["volumeMounts"] if m["name"] == "models")["readOnly"] is True
    hf = render_worker(ClusterWorkerSpec("hf", "some-org/some-model", gpus=gpus, namespace=NS))[1]
    assert next(m for m in hf["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                if m["name"] == "models")["readOnly"] is False


def test_rendered_job_validates(tmp_path):
    nb = tmp_path / "exp.ipynb"
    nb.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    objs = render_job("exp-1", {"run_id": "r", "notebook": str(nb), "params": {"k": 3}}, namespace=NS)
    validate(objs)
    assert_restricted("job", objs[1]["spec"]["template"]["spec"])
    assert objs[1]["spec"]["backoffLimit"] == 0


def test_dry_run_prints_valid_yaml():
    r = subprocess.run([NOTELAB, "worker", "up", "some-org/some-model", "--target", "cluster", "--dry-run",
                        "--gpus", "2", "--replicas", "2", "--namespace", NS, "--", "--enable-prefix-caching"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    validate(docs)
    dep = docs[1]
    assert dep["spec"]["replicas"] == 2 and dep["metadata"]["namespace"] == NS
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "--enable-prefix-caching"
    r = subprocess.run([NOTELAB, "worker", "up", "x/y", "--target", "cluster", "--dry-run", "--gpus", "8",
                        "--replicas", "2"], capture_output=True, text=True)
    assert r.returncode == 1 and "would pass [limits] max_gpus = 8" in r.stderr
    r = subprocess.run([NOTELAB, "worker", "up", "x/y", "--target", "cluster", "--dry-run", "--autoscale", "1:3",
                        "--prometheus", "http://prometheus:9090", "--queue", "2"], capture_output=True, text=True)
    so = list(yaml.safe_load_all(r.stdout))[-1]
    assert so["kind"] == "ScaledObject" and (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (1, 3)
    assert so["spec"]["triggers"][0]["metadata"]["threshold"] == "2"
    for args, msg in [(["--autoscale", "3"], "write MIN:MAX"), (["--autoscale", "1:2"], "needs --prometheus"),
                      (["--", "--api-k=EVIL"], "vLLM reads it as --api-key, which notelab sets"),
                      (["--", "--served_model_name", "x"], "vLLM reads it as --served-model-name")]:
        r = subprocess.run([NOTELAB, "worker", "up", "x/y", "--target", "cluster", "--dry-run", *args],
                           capture_output=True, text=True)
        assert r.returncode == 1 and msg in r.stderr, r.stderr


@pytest.mark.parametrize("overlay", ["dev", "gpu"])
def test_overlays_validate_and_meet_restricted(overlay):
    docs = kustomize(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
            "PersistentVolumeClaim", "NetworkPolicy"} <= kinds
    validate(docs)
    for name, spec in pod_specs(docs):
        assert_restricted(name, spec)
    for d in docs:
        if d["kind"] == "Role":
            for rule in d["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]


DASHBOARD = ROOT / "k8s" / "components" / "monitoring" / "notelab-dashboard.json"


def dashboard_metrics(dash: dict) -> set[str]:
    "The metric names a Grafana dashboard's queries use (notelab's and vLLM's)."
    import re

    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    return {m.removesuffix("_bucket") for e in exprs for m in re.findall(r"\b(notelab_\w+|vllm:\w+)", e)}


def test_the_grafana_dashboard_loads():
    "What Grafana needs to import a dashboard: ids, a grid without overlaps, defined variables, known metrics."
    import re

    from notelab.client import routing_metrics

    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int) and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert p["type"] in ("row", "timeseries", "stat", "gauge", "table") and p["title"]
        assert 0 <= g["x"] and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)) and (p["type"] == "row" or refs), p["title"]
    defined = {v["name"] for v in dash["templating"]["list"]}
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(dash["panels"])))
    assert used <= defined, used - defined
    ours = {m.name for m in routing_metrics().registry.collect()}
    wanted = {m for m in dashboard_metrics(dash) if m.startswith("notelab_")}
    assert wanted and {m.removesuffix("_total") for m in wanted} <= ours, wanted
    # every overlay ships it to Grafana's sidecar, and annotates the lab for Prometheus
    for overlay in ("dev", "gpu"):
        docs = kustomize(overlay)
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "notelab-grafana-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"]["notelab-dashboard.json"]) == dash
        lab = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "lab")
        assert lab["metadata"]["annotations"]["prometheus.io/path"] == "/notelab/api/metrics"


def _pod(name, worker, status):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/instance": worker,
                                                                   "app.kubernetes.io/component": "worker"}},
            "spec": {"containers": [{"name": "vllm", "image": "x"}]}, "status": status}


def test_launcher_against_the_api_emulator(tmp_path):
    with Emulator() as k8s:
        admin = client.CoreV1Api(k8s.client(ADMIN))
        admin_apps, admin_batch = client.AppsV1Api(k8s.client(ADMIN)), client.BatchV1Api(k8s.client(ADMIN))
        cw = ClusterWorkers(k8s.client(LAUNCHER), namespace=NS)

        w = cw.launch(ClusterWorkerSpec("chat", "gemma-3-270m@1", replicas=2, gpus=1, namespace=NS))
        assert (w.state, w.replicas, w.model) == ("starting", 2, "gemma-3-270m@1")
        # the scheduler finds no GPU: shown with its reason, not as "starting" forever
        admin.create_namespaced_pod(NS, _pod("chat-a", "chat", {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}))
        w = cw.get("chat")
        assert w.state == "unschedulable" and "Insufficient nvidia.com/gpu" in w.reason
        admin.delete_namespaced_pod("chat-a", NS)
        admin.create_namespaced_pod(NS, _pod("chat-b", "chat", {"phase": "Pending", "containerStatuses": [
            {"name": "vllm", "image": "x", "imageID": "", "ready": False, "restartCount": 0,
             "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}))
        assert cw.get("chat").state == "failed" and "ImagePullBackOff" in cw.get("chat").reason
        admin.delete_namespaced_pod("chat-b", NS)
        admin.create_namespaced_pod(NS, _pod("chat-c", "chat", {"phase": "Running"}))
        admin_apps.patch_namespaced_deployment_status("chat", NS, {"status": {"readyReplicas": 2, "replicas": 2}})
        assert cw.get("chat").state == "ready"
        assert [x.name for x in cw.list()] == ["chat"]

        k8s.logs[(NS, "chat-c")] = "INFO: Application startup complete.\n"
        assert "startup complete" in cw.logs("chat")
        with pytest.raises(ClusterError, match="has 1 pods"):
            cw.logs("chat", replica=3)
        assert cw.scale("chat", 3).replicas == 3
        with pytest.raises(LimitError):
            cw.scale("chat", 99)
        cw.launch(ClusterWorkerSpec("chat", "gemma-3-270m@1", replicas=3, gpus=1, namespace=NS))  # idempotent
        # an update rolls the Deployment (a surge pod first, none unavailable), keeps its scale and records history
        w = cw.update("chat", "gemma-3-270m@2", ["--max-num-seqs", "64"])
        dep = admin_apps.read_namespaced_deployment("chat", NS)
        args = dep.spec.template.spec.containers[0].args
        assert args[:5] == ["--model", "/models/gemma-3-270m/2", "--served-model-name", "gemma-3-270m", "gemma-3-270m@2"]
        assert args[-2:] == ["--max-num-seqs", "64"] and dep.spec.replicas == 3 and w.model == "gemma-3-270m@2"
        assert (dep.spec.strategy.rolling_update.max_surge, dep.spec.strategy.rolling_update.max_unavailable) == (1, 0)
        assert dep.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
        for bad, msg in [(("qwen@1",), "update it to another version of gemma-3-270m"),
                         (("gemma-3-270m@2", ["--max-num-seqs", "64"]), "already serves"),
                         ((None, ["--api-key", "x"]), "notelab sets")]:
            with pytest.raises(NotelabError, match=msg):
                cw.update("chat", *bad)
        w = cw.rollback("chat")
        args = admin_apps.read_namespaced_deployment("chat", NS).spec.template.spec.containers[0].args
        assert w.model == "gemma-3-270m@1" and "/models/gemma-3-270m/1" in args and "--max-num-seqs" not in args
        assert [(h["event"], h["model"]) for h in cw.history("chat")] == [
            ("launch", "gemma-3-270m@1"), ("update", "gemma-3-270m@2"), ("rollback", "gemma-3-270m@1")]
        # autoscaling on vLLM's queue depth: a KEDA ScaledObject next to the Deployment, gone with the worker
        cw.launch(ClusterWorkerSpec("chat", "gemma-3-270m@1", replicas=3, gpus=1, namespace=NS, autoscale={
            "min": 1, "max": 4, "prometheus": "http://prometheus.monitoring:9090"}))
        custom = client.CustomObjectsApi(k8s.client(ADMIN))
        so = custom.get_namespaced_custom_object("keda.sh", "v1alpha1", NS, "scaledobjects", "chat")
        assert so["spec"]["maxReplicaCount"] == 4 and "vllm:num_requests_waiting" in so["spec"]["triggers"][0]["metadata"]["query"]
        cw.stop("chat")
        with pytest.raises(client.ApiException):
            custom.get_namespaced_custom_object("keda.sh", "v1alpha1", NS, "scaledobjects", "chat")
        assert cw.list() == []
        with pytest.raises(WorkerNotFoundError, match="not found in namespace 'lab'"):
            cw.get("chat")

        admin.delete_namespaced_pod("chat-c", NS)  # (the emulator has no garbage collector, nor label selectors)
        nb = tmp_path / "exp.ipynb"
        nb.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        job = cw.submit(render_job("exp-1", {"run_id": "r", "notebook": str(nb), "params": {"k": 3}}, namespace=NS))
        assert cw.job_state(job) == ("running", "")
        owners = admin.read_namespaced_config_map(job, NS).metadata.owner_references  # it goes with its Job
        assert [(o.kind, o.name, o.uid) for o in owners] == [("Job", job, admin_batch.read_namespaced_job(job, NS).metadata.uid)]
        admin.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "exp-1-xyz", "namespace": NS, "labels": {"job-name": "exp-1"}},
            "spec": {"containers": [{"name": "run", "image": "x"}]}})
        k8s.logs[(NS, "exp-1-xyz")] = "error: exp.ipynb failed: cell 3 raised KeyError: 'k'\n"
        admin_batch.patch_namespaced_job_status("exp-1", NS, {"status": {"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit"}]}})
        with pytest.raises(ClusterError, match=r"(?s)job exp-1 failed \(BackoffLimitExceeded.*KeyError: 'k'"):
            cw.follow(job, poll=0.05)
        cw.delete_job(job)  # a cancelled run's Job and ConfigMap go; a second delete is no error
        cw.delete_job(job)
        with pytest.raises(client.ApiException):
            admin_batch.read_namespaced_job(job, NS)
        with pytest.raises(client.ApiException):
            admin.read_namespaced_config_map(job, NS)

        used = k8s.requests(LAUNCHER)
    # the Role grants exactly what the launcher called, and nothing else
    called = set()
    for r in used:
        res = r.resource
        plural = res.plural + (f"/{r.subresource}" if r.subresource else "")
        verb = {"GET": "get" if r.name else "list", "POST": "create", "PATCH": "patch", "PUT": "update",
                "DELETE": "delete" if r.name else "deletecollection"}[str(r.method).upper().split(".")[-1]]
        called.add((res.group or "", plural, verb))
    role = next(d for d in yaml.safe_load_all((ROOT / "k8s" / "base" / "rbac.yaml").read_text()) if d["kind"] == "Role")
    granted = {(g, res, v) for rule in role["rules"] for g in rule["apiGroups"] for res in rule["resources"]
               for v in rule["verbs"]}
    assert called == granted, f"called but not granted: {sorted(called - granted)}; granted but never called: " \
                              f"{sorted(granted - called)}"
    # no verb that answers with a Secret the lab did not just make (a patch returns the whole object)
    assert not {v for g, res, v in granted if res == "secrets"} & {"get", "list", "watch", "patch", "update"}


def test_stop_and_scale_act_only_on_notelab_workers():
    "A Deployment notelab did not launch (MLflow, the lab) is not a worker: it is neither stopped nor scaled."
    with Emulator() as k8s:
        apps = client.AppsV1Api(k8s.client(ADMIN))
        for name in ("mlflow", "lab"):
            apps.create_namespaced_deployment(NS, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
                "name": name, "namespace": NS, "labels": {"app.kubernetes.io/name": name}}, "spec": {
                "replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {
                    "metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name, "image": "x"}]}}}})
        cw = ClusterWorkers(k8s.client(LAUNCHER), namespace=NS)
        with pytest.raises(WorkerNotFoundError, match="'mlflow' in namespace 'lab' is not a worker notelab launched"):
            cw.stop("mlflow")
        with pytest.raises(WorkerNotFoundError, match="not a worker notelab launched"):
            cw.scale("lab", 0)
        assert [apps.read_namespaced_deployment(n, NS).spec.replicas for n in ("mlflow", "lab")] == [1, 1]
        assert cw.list() == []


def test_half_made_worker_is_removed():
    with Emulator() as k8s:
        cw = ClusterWorkers(k8s.client(LAUNCHER), namespace=NS)
        # the API refuses Services: the Secret and Deployment already applied must go again
        k8s.k["patch", k8s_resource("services")] << (lambda req: (_ for _ in ()).throw(RuntimeError("refused")))
        with pytest.raises(Exception):
            cw.launch(ClusterWorkerSpec("chat", "gemma-3-270m@1", gpus=1, namespace=NS))
        assert cw.list() == []


def k8s_resource(plural):
    import kmock

    return kmock.resource("", "v1", plural)


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    "A real MLflow tracking server, as the cluster runs one."
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                          str(port), "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
                          "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                         stdout=open(tmp_path / "mlflow.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        until_serving(p, lambda: answers(f"{url}/health"), "the MLflow server", tmp_path / "mlflow.log")
        monkeypatch.setenv("NOTELAB_TRACKING_MLFLOW_URI", url)
        yield url
    finally:
        p.terminate()
        p.wait(10)


def test_run_on_the_cluster_is_tracked_and_a_failed_or_vanished_job_marks_it(tmp_path, mlflow_server, monkeypatch):
    import nbformat
    from mlflow import MlflowClient

    from notelab.params import ParameterError
    from notelab.runs import get_run, submit

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("k = 5\nlr = 0.1")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "exp.ipynb"
    nbformat.write(nb, path)
    with Emulator() as k8s:
        monkeypatch.setenv("KUBECONFIG", k8s.kubeconfig(tmp_path / "kubeconfig"))
        with pytest.raises(ParameterError, match="parameter 'kk' is not in exp.ipynb"):
            submit(path, {"kk": 1}, target="cluster", namespace=NS, experiment="cluster-runs")
        h = submit(path, {"k": 7, "lr": 1e-05}, target="cluster", namespace=NS, experiment="cluster-runs")
        mlc = MlflowClient(mlflow_server)
        run = mlc.get_run(h.run_id)
        assert run.info.status == "RUNNING" and run.data.params["k"] == "7"
        job = run.data.tags["notelab.job"].split("/")[1]
        assert run.data.tags["notelab.job"] == f"{NS}/{job}"
        batch, core = client.BatchV1Api(k8s.client(ADMIN)), client.CoreV1Api(k8s.client(ADMIN))
        c = batch.read_namespaced_job(job, NS).spec.template.spec.containers[0]
        assert c.command == ["python", "-m", "notelab.runs", "/work/spec.json"]
        spec = json.loads(core.read_namespaced_config_map(job, NS).data["spec.json"])
        assert spec["run_id"] == h.run_id and spec["params"] == {"k": 7, "lr": 1e-05}  # a float, not '1e-05'
        # the Job fails before the notebook could say anything: the next read of the run says why
        batch.patch_namespaced_job_status(job, NS, {"status": {"conditions": [
            {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "image never pulled"}]}})
        assert h.status == "FAILED"
        assert "DeadlineExceeded" in mlc.get_run(h.run_id).data.tags["notelab.error"]

        h2 = submit(path, {"k": 1}, target="cluster", namespace=NS, experiment="cluster-runs")
        job2 = mlc.get_run(h2.run_id).data.tags["notelab.job"].split("/")[1]
        batch.delete_namespaced_job(job2, NS)  # evicted, deleted by hand: gone without a word
        r = get_run(h2.run_id)
        assert r.info.status == "FAILED" and "is gone (deleted or evicted)" in r.data.tags["notelab.error"]

        h3 = submit(path, {}, target="cluster", namespace=NS, experiment="cluster-runs")
        job3 = mlc.get_run(h3.run_id).data.tags["notelab.job"].split("/")[1]
        r = subprocess.run([NOTELAB, "runs", "cancel", h3.run_id, "--json"], capture_output=True, text=True,
                           env={**os.environ, "KUBECONFIG": str(tmp_path / "kubeconfig")})
        assert r.returncode == 0 and json.loads(r.stdout)[0]["status"] == "KILLED", r.stderr
        with pytest.raises(client.ApiException):  # the Job is deleted, with its ConfigMap
            batch.read_namespaced_job(job3, NS)
        with pytest.raises(client.ApiException):
            core.read_namespaced_config_map(job3, NS)


class Kubelet:
    """Plays the cluster's part for Jobs: runs each new Job's command here (its notebook and parameters from
    the Job's ConfigMap, its MLflow run on the same server) and sets the Job's status from the exit code."""

    def __init__(self, k8s, workdir: Path):
        import threading

        self.k8s, self.workdir, self.seen, self.stop = k8s, workdir, set(), threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        batch, core = client.BatchV1Api(self.k8s.client(ADMIN)), client.CoreV1Api(self.k8s.client(ADMIN))
        while not self.stop.wait(0.2):
            for job in batch.list_namespaced_job(NS).items:
                name = job.metadata.name
                if name in self.seen:
                    continue
                self.seen.add(name)
                work = self.workdir / name
                work.mkdir(parents=True)
                for f, text in core.read_namespaced_config_map(name, NS).data.items():
                    (work / f).write_text(text)
                c = job.spec.template.spec.containers[0]
                spec = json.loads((work / "spec.json").read_text())  # the pod's paths, here
                spec.update(notebook=str(work / Path(spec["notebook"]).name), output=str(work / "out.ipynb"))
                (work / "spec.json").write_text(json.dumps(spec))
                argv = [sys.executable if a == "python" else a.replace("/work/", f"{work}/") for a in c.command]
                env = {**os.environ, **{e.name: e.value for e in c.env if e.name == "NOTELAB_TRACKING_MLFLOW_URI"}}
                r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=work)
                cond = {"type": "Complete", "status": "True"} if r.returncode == 0 else \
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "exit 1"}
                batch.patch_namespaced_job_status(name, NS, {"status": {"conditions": [cond]}})

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def test_sweep_on_the_cluster_runs_each_variant_as_a_job(tmp_path, mlflow_server, monkeypatch):
    import nbformat
    from mlflow import MlflowClient

    from notelab.sweeps import sweep

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("k = 1")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("from notelab.tracking import log_metric\nlog_metric('inv', 1 / k)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "exp.ipynb"
    nbformat.write(nb, path)
    with Emulator() as k8s, Kubelet(k8s, tmp_path / "pods") as kubelet:
        monkeypatch.setenv("KUBECONFIG", k8s.kubeconfig(tmp_path / "kubeconfig"))
        s = sweep(path, grid={"k": [1, 2, 0]}, experiment="cluster-sweep", parallel=3, target="cluster",
                  namespace=NS, metric="inv", show_progress=False)
        assert len(kubelet.seen) == 3  # one Job per variant
    t = s.table.set_index("k")
    assert list(t.status) == ["FINISHED", "FINISHED", "FAILED"] and list(t.inv[:2]) == [1.0, 0.5]  # sorted by inv
    assert "ZeroDivisionError" in t.loc[0, "error"]
    mlc = MlflowClient(mlflow_server)
    parent = mlc.get_run(s.parent_run_id)
    assert parent.data.tags["notelab.target"] == "cluster" and parent.data.metrics["best_inv"] == 1.0
    kids = mlc.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{s.parent_run_id}'")
    assert sorted(r.info.status for r in kids) == ["FAILED", "FINISHED", "FINISHED"]
    assert all(r.data.tags["notelab.job"].startswith(f"{NS}/run-") for r in kids)


def test_mlflow_in_the_cluster_answers_by_its_service_name_and_port(tmp_path):
    """The MLflow Deployment's flags, run here: a request for `http://mlflow:5000` (what runs and the lab send) is
    answered; one for another host is not (its host check is what guards it from DNS rebinding)."""
    import socket
    import urllib.error
    import urllib.request

    dep = next(d for d in yaml.safe_load_all((ROOT / "k8s" / "base" / "mlflow.yaml").read_text()) if d["kind"] == "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = {"--host": "127.0.0.1", "--port": str(port), "--backend-store-uri": f"sqlite:///{tmp_path}/mlflow.db",
            "--artifacts-destination": str(tmp_path / "artifacts")}
    argv = [a if a.split("=")[0] not in here else f"{a.split('=')[0]}={here[a.split('=')[0]]}" for a in args]
    p = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", *argv, "--workers", "1"],
                         stdout=open(tmp_path / "mlflow.log", "wb"), stderr=subprocess.STDOUT,
                         start_new_session=True)  # its uvicorn, job runner and huey consumer: one group to end

    def get(host: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?max_results=5",
                                     headers={"Host": host})
        try:
            return urllib.request.urlopen(req, timeout=10).status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        until_serving(p, lambda: answers(f"http://127.0.0.1:{port}/health"), "the MLflow server", tmp_path / "mlflow.log")
        assert [get(h) for h in ("mlflow:5000", "mlflow.notelab.svc:5000", "mlflow")] == [200, 200, 200]
        assert get("evil.example:5000") == 403
    finally:  # the server waits for its children to shut down: 4 s idle, more than 10 on a loaded machine
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(300)  # a bound for a hang, not an expected time
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # whatever of the group outlived its parent
            except ProcessLookupError:
                pass
