"""A plain HTTP server that answers the operator's API calls from a script, for tests of how the operator's
client and startup cope with what a real API server sometimes answers (429 while a watch cache starts)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# (status, headers, body) for the n-th request (0-based) to a path
Answer = tuple[int, dict[str, str], dict]
Script = Callable[[str, str, int], Answer]


class ScriptedApi:
    def __init__(self, script: Script) -> None:
        self.requests: list[tuple[str, str]] = []
        seen: dict[tuple[str, str], int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                path = self.path.split("?")[0]
                key = (self.command, path)
                outer.requests.append(key)
                status, headers, body = script(self.command, path, seen.get(key, 0))
                seen[key] = seen.get(key, 0) + 1
                data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedApi:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "scripted",
            "clusters": [{"name": "scripted", "cluster": {"server": self.url}}],
            "users": [{"name": "scripted", "user": {"token": "t"}}],
            "contexts": [{"name": "scripted", "context": {"cluster": "scripted", "user": "scripted"}}],
        }))  # fmt: skip
        return path


EMPTY_LIST: Answer = (200, {}, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []})
# what kube-apiserver answers a list of a resource whose watch cache is still starting (a CRD just created)
CACHE_STARTING: Answer = (
    429,
    {"Retry-After": "1"},
    {"kind": "Status", "status": "Failure", "message": "storage is (re)initializing", "code": 429},
)
