"""A live camelid server on loopback for tests: uvicorn in a thread on a free port."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from camelid.serve import make_limits
from camelid.serve.app import create_app
from camelid.serve.server import server_config

STORIES = Path(__file__).resolve().parents[1] / "examples" / "stories260K"
# stories260K ships no chat template, so the chat tests hand the server one (--template tulu).
TEMPLATE = "tulu"


@contextmanager
def live_server(served, api_key: str | None = None, read_timeout: float = 30.0, **limits):
    app = create_app(served, make_limits(served.max_position_embeddings, **limits), api_key=api_key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, read_timeout, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app.state.camelid
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def request(url: str, body: object | bytes | None = None, headers: dict | None = None, method=None):
    """(status, parsed JSON or text) of one raw HTTP request, errors included."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    if method:
        req.method = method
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def metric(base: str, name: str) -> float:
    _, text = request(base + "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)
