"""Writing one answer to the client: the pod's, passed through as it arrives, or the router's own (held too
long, body too large). A streaming request that is held gets its 200 and server-sent-event headers when the
first keep-alive comment is due, so that clients and proxies with idle timeouts wait; an answer that is not a
success after that point can no longer change the status and goes out as an SSE `error` event instead."""

from __future__ import annotations

import json

RETRY_AFTER_S = "5"
KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies in between must not buffer the stream either
]


def error_body(message: str, kind: str, code: str) -> dict:
    """The OpenAI error format, as the runtime writes it."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class Responder:
    def __init__(self, send, extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
        self._send = send
        self._extra = list(extra_headers)
        self.status: int | None = None  # what the client got (200 once SSE headers went out)
        self.streaming_early = False  # 200 and SSE headers sent while held
        self._converting = False  # a non-200 answer after early headers: its body becomes an error event
        self._error_body = b""
        self.client_left = False  # the client went away before the whole answer was written

    @property
    def started(self) -> bool:
        return self.status is not None

    async def keepalive(self) -> None:
        if not self.started:
            self.status, self.streaming_early = 200, True
            await self._send(
                {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + self._extra}
            )
        await self._send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.streaming_early:
            self._converting = status != 200
            return
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers + self._extra})

    async def body(self, chunk: bytes) -> None:
        if self._converting:
            self._error_body += chunk
        elif chunk:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self) -> None:
        if self._converting:
            try:
                error = json.loads(self._error_body)
            except ValueError:
                error = error_body(self._error_body.decode(errors="replace"), "server_error", "bad_gateway")
            await self._send({"type": "http.response.body", "body": _event(error), "more_body": True})
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def refuse(
        self, status: int, message: str, kind: str, code: str, retry_after: bool = False
    ) -> None:
        """The router's own answer: an OpenAI error body, or an SSE error event once headers went out."""
        error = error_body(message, kind, code)
        if self.started:
            await self._send({"type": "http.response.body", "body": _event(error), "more_body": True})
            await self._send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        self.status = status
        headers = [(b"content-type", b"application/json")] + self._extra
        if retry_after:
            headers.append((b"retry-after", RETRY_AFTER_S.encode()))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send(
            {"type": "http.response.body", "body": json.dumps(error).encode(), "more_body": False}
        )


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"
