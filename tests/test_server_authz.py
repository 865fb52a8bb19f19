"""The API asks the Jupyter server's Authorizer: a user who may only read the resource `notelab` can list
but not launch, run, cancel, scale or stop."""
import json

import pytest
from jupyter_server.auth import Authorizer
from tornado.httpclient import HTTPClientError

pytest_plugins = ["pytest_jupyter.jupyter_server"]


class ReadOnly(Authorizer):
    "Reads of notelab's API allowed, nothing else of it."

    def is_authorized(self, handler, user, action, resource):
        return resource != "notelab" or action == "read"


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"notelab": True}, "authorizer_class": ReadOnly}}


async def status(jp_fetch, method, *path, body=None):
    try:
        r = await jp_fetch("notelab", "api", *path, method=method, allow_nonstandard_methods=True,
                           body=None if method in ("GET", "DELETE") else json.dumps(body or {}))
    except HTTPClientError as e:
        r = e.response
    return r.code


async def test_a_read_only_user_reads_but_changes_nothing(jp_fetch):
    for path in (("rules",), ("models",), ("runs",), ("metrics",), ("knowledge",), ("chat", "pipelines")):
        assert await status(jp_fetch, "GET", *path) == 200, path
    for method, path in [("POST", ("workers",)), ("DELETE", ("workers", "x")), ("POST", ("workers", "x", "scale")),
                         ("POST", ("runs",)), ("POST", ("runs", "x", "cancel")), ("POST", ("sweeps",)),
                         ("POST", ("knowledge",)), ("DELETE", ("knowledge", "x")), ("POST", ("knowledge", "x", "files")),
                         ("POST", ("knowledge", "x", "ingest")), ("DELETE", ("knowledge", "x", "source")),
                         ("POST", ("chat",)), ("POST", ("chat", "notebook"))]:
        assert await status(jp_fetch, method, *path) == 403, (method, path)
