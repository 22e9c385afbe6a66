"""An ASGI middleware that refuses request bodies over a size (413) without keeping more than that."""

from __future__ import annotations

import asyncio
import json
import time

from moe_runtime.api.protocol import error_body

# What the server reads and throws away of an oversized body before it closes the connection, as nginx's
# lingering close: many clients (urllib, requests) write the whole body before they read the answer, and a
# connection closed on unread bytes is reset, so they would see "connection reset", not the 413.
DISCARD_BYTES = 64 * 2**20
DISCARD_S = 10.0


class BodyLimit:
    """Answers 413 to a request whose body is larger than `max_bytes`, keeping no more of it than that;
    hands the app the body it read, then the rest of the connection's messages (disconnects)."""

    def __init__(
        self,
        app,
        max_bytes: int,
        on_refused,
        discard_bytes: int = DISCARD_BYTES,
        discard_s: float = DISCARD_S,
    ) -> None:
        self.app, self.max_bytes, self.on_refused = app, max_bytes, on_refused
        self.discard_bytes, self.discard_s = discard_bytes, discard_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # a client waiting for "100 Continue" has sent nothing yet: it gets the answer instead
            unsent = headers.get(b"expect", b"").lower() == b"100-continue"
            return await self._refuse(receive, send, more_body=not unsent)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(receive, send, more_body=message.get("more_body", False))
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse(self, receive, send, more_body: bool) -> None:
        """The 413 goes out at once (a client that reads while it sends sees it now); the response ends only
        after the rest of the body was read and thrown away, up to the bounds, and the connection closes."""
        self.on_refused()
        message = f"The request body is larger than this server's limit of {self.max_bytes} bytes (--max-request-bytes)"
        body = json.dumps(error_body(message, "invalid_request_error", None, "request_too_large")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        if more_body:
            await self._discard(receive)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _discard(self, receive) -> None:
        deadline, read = time.monotonic() + self.discard_s, 0
        while read <= self.discard_bytes and (left := deadline - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(receive(), timeout=left)
            except TimeoutError:
                return
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def _replay(messages: list[dict], receive):
    pending = list(messages)

    async def replayed() -> dict:
        return pending.pop(0) if pending else await receive()

    return replayed
