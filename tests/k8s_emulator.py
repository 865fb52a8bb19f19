"""kmock's Kubernetes API emulator on a real port, for the official (synchronous) client.

kmock serves from an asyncio loop; here it runs in a thread of its own. Two additions to the emulator:
server-side apply creates an object that does not exist yet (as the real API server does), giving it a
`metadata.uid` as the API server does (owner references name their owner by it), and the log of a pod is
served from `logs[(namespace, pod)]`.
"""
import asyncio
import threading
import uuid

import kmock
from kubernetes import client


RESOURCES = {"apps/v1/deployments": "Deployment", "v1/services": "Service", "v1/secrets": "Secret",
             "v1/configmaps": "ConfigMap", "v1/pods": "Pod", "batch/v1/jobs": "Job",
             "keda.sh/v1alpha1/scaledobjects": "ScaledObject"}


class ApplyingEmulator(kmock.KubernetesEmulator):
    async def _handle(self, request):
        ctype = request.headers.get("Content-Type", "")
        if request.method == "PATCH" and "apply-patch" in ctype and request.name and not request.subresource:
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key not in self._objects or self._objects[key].deleted:
                    request.data.setdefault("metadata", {})["uid"] = str(uuid.uuid4())
                if key not in self._objects:
                    self._objects[key] = request.data
                elif self._objects[key].deleted:
                    self._objects[key].create(request.data)
        return await super()._handle(request)


class Emulator:
    "`with Emulator() as k8s:` an API server at `k8s.url`; `k8s.client(agent)` a client that says who it is."

    def __enter__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.logs: dict[tuple[str, str], str] = {}

        async def start():
            self.k = ApplyingEmulator()
            await self.k.__aenter__()
            for key, kind in RESOURCES.items():  # discoverable and listable before any object exists
                self.k.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=True)
            self.k[kmock.subresource("log")] << (lambda req: self.logs.get((req.namespace, req.name), ""))
            self.srv = kmock.Server(self.k)
            await self.srv.__aenter__()
            return str(self.srv.url).rstrip("/")

        self.url = asyncio.run_coroutine_threadsafe(start(), self.loop).result(20)
        return self

    def __exit__(self, *exc):
        async def stop():
            await self.srv.__aexit__(None, None, None)
            await self.k.__aexit__(None, None, None)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def client(self, agent: str) -> client.ApiClient:
        api = client.ApiClient(client.Configuration(host=self.url))
        api.user_agent = agent
        return api

    def kubeconfig(self, path) -> str:
        "Write a kubeconfig for this API server (for code that finds its cluster as users do); its path."
        import yaml

        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emu",
            "clusters": [{"name": "emu", "cluster": {"server": self.url}}],
            "users": [{"name": "lab", "user": {"token": "x"}}],
            "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "lab"}}]}))
        return str(path)

    def requests(self, agent: str) -> list:
        "The requests a client with this user agent made, in order."
        return [r for r in self.k if r.headers.get("User-Agent") == agent]
