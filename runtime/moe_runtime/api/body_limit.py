"""An ASGI middleware that refuses request bodies over a size (413) without reading more than that."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from moe_runtime.api.protocol import error_body


class BodyLimit:
    """Answers 413 to a request whose body is larger than `max_bytes`, reading no more of it than that;
    hands the app the body it read, then the rest of the connection's messages (disconnects)."""

    def __init__(self, app, max_bytes: int, on_refused) -> None:
        self.app, self.max_bytes, self.on_refused = app, max_bytes, on_refused

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse(self, scope, receive, send) -> None:
        self.on_refused()
        message = f"The request body is larger than this server's limit of {self.max_bytes} bytes (--max-request-bytes)"
        body = error_body(message, "invalid_request_error", None, "request_too_large")
        await JSONResponse(body, status_code=413)(scope, receive, send)


def _replay(messages: list[dict], receive):
    pending = list(messages)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed
