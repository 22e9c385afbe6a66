"""The router's HTTP side (ASGI, served by uvicorn): /health, /ready, /metrics, and every /v1/ request passed to
the pod `RouterState.choose` picks.

A request is sent once, and once more to another pod when the first answered 503 (draining, loading) or 429
(queue full), or its connection broke, before any byte came back: idempotency is never assumed after the
first byte, so an answer that breaks midway breaks for the client too. A connection that could not even be
made reached no pod and does not use up that retry (three tries at most). A pod that refused is passed over
for a few seconds while others can take requests (state.py). With no Ready pod the request is held
(at most `max_held` of them, each at most `hold_timeout_s`), then 503 with Retry-After. Answers stream through
unbuffered; a client that goes away closes the pod's answer, which cancels the generation there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import httpx

from moe_runtime.router.addresses import AddressMap
from moe_runtime.router.metrics import RouterMetrics
from moe_runtime.router.requests import RequestView, read_request
from moe_runtime.router.responder import Responder
from moe_runtime.router.state import Choice, RouterState

log = logging.getLogger("moe_runtime.router.app")

POD_HEADER = b"x-moedeploy-pod"
HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length",
}  # fmt: skip
TRANSPORT_ERRORS = (httpx.TransportError,)


@dataclass(frozen=True)
class Limits:
    hold_timeout_s: float = 300.0
    max_held: int = 1024
    keepalive_s: float = 5.0
    max_request_bytes: int = 16 * 1024 * 1024
    connect_timeout_s: float = 3.0
    read_timeout_s: float | None = 900.0  # between two chunks of a pod's answer


# Tries per request: the first, and others only while the ones before never reached a pod (connection refused or
# timed out: nothing can have run); a request that may have reached one is sent again once at most.
MAX_ATTEMPTS = 3
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


class Sent(Enum):
    ANSWERED = "answered"
    RETRY_CONNECT = "connect_error"  # the connection failed: the request reached no pod
    RETRY_BROKEN = "broken"  # the connection broke before the answer began: it may have reached the pod
    RETRY_UNAVAILABLE = "unavailable"  # the pod answered 503 (draining, loading) or 429 (queue full)


@dataclass(frozen=True)
class Budget:
    connect: bool  # may retry after a failed connection
    refusal: bool  # may retry after a refusal or a broken connection


class RouterApp:
    def __init__(
        self,
        state: RouterState,
        metrics: RouterMetrics,
        addresses: AddressMap,
        limits: Limits,
        ready: Callable[[], bool],
    ) -> None:
        self.state, self.metrics, self.addresses, self.limits = state, metrics, addresses, limits
        self._ready = ready
        self._client: httpx.AsyncClient | None = None
        self.held = 0  # requests waiting for a Ready pod
        self.in_flight = 0  # requests accepted and not answered yet, held ones included

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = httpx.Timeout(
                connect=self.limits.connect_timeout_s, read=self.limits.read_timeout_s, write=60, pool=None
            )
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=512, keepalive_expiry=30)
            self._client = httpx.AsyncClient(timeout=timeout, limits=limits)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/health":
            return await _plain(send, 200, b'{"status": "ok"}')
        if path == "/ready":
            ok = self._ready()
            return await _plain(
                send, 200 if ok else 503, b'{"status": "ready"}' if ok else b'{"status": "not ready"}'
            )
        if path == "/metrics" and method == "GET":
            return await _plain(send, 200, self.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8")
        if path.startswith("/v1/"):
            return await self._route(scope, receive, send)
        return await _plain(
            send, 404, b'{"error": {"message": "Not found", "type": "invalid_request_error"}}'
        )

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- one request ---------------------------------------------------------------------------------------

    async def _route(self, scope, receive, send) -> None:
        arrived = time.monotonic()
        self.metrics.last_request.set(time.time())
        self.in_flight += 1
        self.metrics.in_flight.inc()
        responder = Responder(send)
        try:
            body = await _read_body(receive, self.limits.max_request_bytes)
            if body is None:
                await responder.refuse(
                    413, f"The request body is larger than the router's limit of {self.limits.max_request_bytes} bytes",
                    "invalid_request_error", "request_too_large",
                )  # fmt: skip
                return
            view = read_request(scope["path"], body)
            gone = asyncio.Event()
            watcher = asyncio.create_task(_watch_disconnect(receive, gone))
            try:
                await self._answer(scope, body, view, responder, gone, arrived)
            finally:
                watcher.cancel()
                if gone.is_set():
                    responder.client_left = True
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            code = 499 if responder.client_left or responder.status is None else responder.status
            self.metrics.requests.labels(code=str(code)).inc()

    async def _answer(
        self, scope, body: bytes, view: RequestView, responder: Responder, gone, arrived
    ) -> None:
        tried: list[str] = []
        held_s = 0.0
        retried = False  # the one retry after the request may have reached a pod
        while True:
            choice = self.state.choose(view, exclude=tried)
            if choice is None:
                if self.held >= self.limits.max_held:
                    return await self._no_capacity(responder, "the router holds as many requests as it may")
                started = time.monotonic()
                choice = await self._hold(view, tried, responder, gone)
                held_s += time.monotonic() - started
                if choice is None:
                    if not gone.is_set():
                        await self._no_capacity(
                            responder, f"none became Ready within {self.limits.hold_timeout_s:g} s"
                        )
                    return None
            if not tried:
                self.metrics.routing_latency.observe(time.monotonic() - arrived - held_s)
            budget = Budget(
                connect=len(tried) + 1 < MAX_ATTEMPTS, refusal=not retried and len(tried) + 1 < MAX_ATTEMPTS
            )
            sent = await self._send_to(choice, scope, body, view, responder, gone, budget, retry=bool(tried))
            if sent is Sent.ANSWERED:
                return None
            retried = retried or sent is not Sent.RETRY_CONNECT
            tried.append(choice.endpoint.address)
            self.state.suspect(choice.endpoint.address)
            self.metrics.retries.labels(reason=sent.value).inc()

    async def _no_capacity(self, responder: Responder, why: str) -> None:
        await responder.refuse(
            503, f"No pod of this model is Ready to serve: {why}", "service_unavailable", "no_capacity",
            retry_after=True,
        )  # fmt: skip

    async def _hold(self, view: RequestView, tried: list[str], responder: Responder, gone) -> Choice | None:
        """Waits for a pod to pick; None when the wait runs out or the client goes away."""
        self.held += 1
        self.metrics.held.inc()
        started = time.monotonic()
        deadline = started + self.limits.hold_timeout_s
        next_keepalive = started + self.limits.keepalive_s
        try:
            while not gone.is_set():
                choice = self.state.choose(view, exclude=tried)
                if choice is not None:
                    return choice
                now = time.monotonic()
                if now >= deadline:
                    return None
                if view.stream and now >= next_keepalive:
                    await responder.keepalive()
                    next_keepalive = now + self.limits.keepalive_s
                wake = min(deadline, next_keepalive if view.stream else deadline) - now
                changed = asyncio.ensure_future(self.state.changed().wait())
                leaving = asyncio.ensure_future(gone.wait())
                await asyncio.wait(
                    {changed, leaving}, timeout=max(0.0, wake), return_when=asyncio.FIRST_COMPLETED
                )
                changed.cancel()
                leaving.cancel()
            return None
        finally:
            self.held -= 1
            self.metrics.held.dec()
            self.metrics.hold_seconds.observe(time.monotonic() - started)

    async def _send_to(
        self,
        choice: Choice,
        scope,
        body: bytes,
        view,
        responder: Responder,
        gone,
        budget: Budget,
        retry: bool,
    ) -> Sent:
        """Sends the request to the chosen pod and streams its answer back; RETRY_* when the pod did not take it
        and the budget allows another try."""
        endpoint = choice.endpoint
        self.state.begin(endpoint, view.cost_tokens)
        reason = "retry" if retry else choice.reason
        self.metrics.picks.labels(pod=endpoint.pod, track=endpoint.track, reason=reason).inc()
        query = scope.get("query_string", b"").decode()
        url = f"http://{self.addresses.dial(endpoint.address)}{scope['path']}" + (
            f"?{query}" if query else ""
        )
        response = None
        try:
            request = self.client().build_request(
                scope["method"], url, headers=_request_headers(scope), content=body
            )
            try:
                response = await self.client().send(request, stream=True)
            except TRANSPORT_ERRORS as err:
                self.state.suspect(endpoint.address)
                connect = isinstance(err, CONNECT_ERRORS)
                if connect and budget.connect:
                    return Sent.RETRY_CONNECT
                if not connect and budget.refusal:
                    return Sent.RETRY_BROKEN
                log.warning("%s: %s", endpoint.pod, err)
                await responder.refuse(
                    502, f"The pod could not be reached: {err}", "server_error", "bad_gateway"
                )
                return Sent.ANSWERED
            if response.status_code in (503, 429) and budget.refusal:
                return Sent.RETRY_UNAVAILABLE
            headers = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            if "content-length" in response.headers:
                headers.append((b"content-length", response.headers["content-length"].encode()))
            await responder.start(response.status_code, [*headers, (POD_HEADER, endpoint.pod.encode())])
            try:
                async for chunk in response.aiter_raw():
                    if gone.is_set():
                        responder.client_left = True
                        return Sent.ANSWERED
                    await responder.body(chunk)
            except TRANSPORT_ERRORS as err:
                # the pod broke its answer midway: nothing can be retried after the first byte
                log.warning("%s broke its answer: %s", endpoint.pod, err)
                responder.status = 502
                raise
            await responder.end()
            return Sent.ANSWERED
        finally:
            if response is not None:
                await response.aclose()
            self.state.end(endpoint, view.cost_tokens)


def _request_headers(scope) -> list[tuple[bytes, bytes]]:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
    client = scope.get("client")
    if client:
        headers.append((b"x-forwarded-for", client[0].encode()))
    return headers


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole body; None when it is larger than `limit` (the rest is not read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _watch_disconnect(receive, gone: asyncio.Event) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return


async def _plain(send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]}
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
