"""Draining an HTTP server without sending clients 503s on kept connections (the runtime's and the router's).

`CloseWhenDraining`: an ASGI middleware that answers with `Connection: close` once the server drains.

A client that keeps its connection to a draining pod (a pooled keep-alive connection, kube-proxy's choice made
once per connection) would otherwise send every later request to it and get 503 after 503 for the whole drain.
With `Connection: close` on each answer it reconnects, and the Service sends the new connection to a pod that
serves. The answers that started before the drain close their connection when they end (the server's
`shutdown()` of each connection), and idle connections are closed at once (`close_connections`).
"""

from __future__ import annotations

from collections.abc import Callable

CLOSE = (b"connection", b"close")


class CloseWhenDraining:
    def __init__(self, app, draining: Callable[[], bool]) -> None:
        self.app, self.draining = app, draining

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def closing_send(message: dict) -> None:
            if message["type"] == "http.response.start" and self.draining():
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, CLOSE]}
            await send(message)

        await self.app(scope, receive, closing_send)


def close_connections(server) -> None:
    """Closes a uvicorn server's idle keep-alive connections now; one with an answer in flight closes when the
    answer ends. Call it on the server's event loop."""
    for connection in list(server.server_state.connections):
        connection.shutdown()
