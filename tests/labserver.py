"""A Jupyter server with notelab's extension in a process of its own (for tests that kill it, or fuzz it)."""
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from serving import answers, until_serving

BIN = Path(sys.executable).parent


class Lab:
    "A Jupyter server with notelab's extension, in a process of its own, that can be killed and started again."

    def __init__(self, root: Path, log: Path, env: dict | None = None, python: Path | None = None):
        "`python`: the interpreter of another environment to run the server in (default: jupyter of this one)."
        self.root, self.log, self.token, self.proc, self.env = root, log, secrets.token_hex(16), None, env or {}
        self.python = python
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/notelab/api/"

    def start(self) -> "Lab":
        server = [str(self.python), "-m", "jupyter_server"] if self.python else [str(BIN / "jupyter"), "server"]
        argv = [*server, "--no-browser", f"--port={self.port}", "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.token={self.token}", f"--ServerApp.root_dir={self.root}", "--ServerApp.port_retries=0"]
        if os.geteuid() == 0:
            argv.append("--allow-root")
        self.proc = subprocess.Popen(argv, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **self.env})
        until_serving(self.proc, lambda: answers(self.url + "rules", headers=self.auth), "the lab", self.log)
        return self

    @property
    def auth(self) -> dict:
        return {"Authorization": f"token {self.token}"}

    def get(self, path: str, **params):
        r = httpx.get(self.url + path, headers=self.auth, params=params, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: dict):
        r = httpx.post(self.url + path, headers=self.auth, json=body, timeout=60)
        assert r.status_code in (200, 202), r.text
        return r.json()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
