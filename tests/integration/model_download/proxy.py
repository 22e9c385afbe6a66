"""A loopback TCP proxy in front of the S3 server that logs every HTTP request and can, for chosen ones,
cut the connection, hold the answer, or flip a byte of it after a number of bytes."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    target: str  # path and query as sent
    headers: dict[str, str]  # lower-case names

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


@dataclass
class Rule:
    """What happens to the answer of the next `times` requests for a path ending in `path_suffix`, once
    `after_bytes` of it (headers included) have passed: "cut" closes the connection, "hold" stops until
    the proxy is released, "corrupt" flips the next byte."""

    path_suffix: str
    action: str
    after_bytes: int
    times: int = 1
    method: str = "GET"
    seen: int = field(default=0, init=False)


class S3Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.requests: list[Request] = []
        self.rules: list[Rule] = []
        self.holding = threading.Event()  # set while an answer is held
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        # close() alone leaves the thread blocked in accept() holding the socket open for one more client
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def object_gets(self, key_suffix: str = "") -> list[Request]:
        """GETs of objects (not listings) whose path ends in key_suffix."""
        return [
            r
            for r in list(self.requests)
            if r.method == "GET" and "list-type=" not in r.target and r.path.endswith(key_suffix)
        ]

    def object_requests(self) -> list[Request]:
        """Every request that reads an object or its metadata, as opposed to listing the bucket."""
        return [
            r for r in list(self.requests) if r.method in ("GET", "HEAD") and "list-type=" not in r.target
        ]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            connection = _Connection(self, client, upstream)
            threading.Thread(target=connection.requests_in, daemon=True).start()
            threading.Thread(target=connection.answers_out, daemon=True).start()

    def _match(self, request: Request) -> Rule | None:
        with self._lock:
            self.requests.append(request)
            for rule in self.rules:
                if (
                    rule.method == request.method
                    and request.path.endswith(rule.path_suffix)
                    and rule.seen < rule.times
                ):
                    rule.seen += 1
                    return rule
        return None


class _Connection:
    """One client connection: requests are parsed on their way in; answers pass through the active rule.
    HTTP/1.1 answers come in the order of the requests, and botocore sends one at a time."""

    def __init__(self, proxy: S3Proxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.rule: Rule | None = None
        self.answered = 0  # bytes of the current answer sent so far

    def requests_in(self) -> None:
        buffer, body_left = b"", 0
        try:
            while data := self.client.recv(65536):
                buffer += data
                while True:
                    if body_left:
                        skipped = min(body_left, len(buffer))
                        buffer, body_left = buffer[skipped:], body_left - skipped
                        if body_left:
                            break
                    head, sep, rest = buffer.partition(b"\r\n\r\n")
                    if not sep:
                        break
                    request = _parse(head)
                    self.rule, self.answered = self.proxy._match(request), 0
                    buffer, body_left = rest, int(request.headers.get("content-length", "0"))
                self.upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(self.upstream)

    def answers_out(self) -> None:
        try:
            while data := self.upstream.recv(65536):
                if not self._send(data):
                    break
        except OSError:
            pass
        finally:
            _close(self.client)
            _close(self.upstream)

    def _send(self, data: bytes) -> bool:
        rule, start = self.rule, self.answered
        self.answered += len(data)
        if rule is None or self.answered <= rule.after_bytes:
            self.client.sendall(data)
            return True
        split = max(0, rule.after_bytes - start)
        self.client.sendall(data[:split])
        rest = data[split:]
        if rule.action == "cut":
            return False
        self.rule = None  # the rule acts once per answer
        if rule.action == "hold":
            self.proxy.holding.set()
            self.proxy.released.wait()
            self.proxy.holding.clear()
        elif rule.action == "corrupt":
            rest = bytes([rest[0] ^ 0xFF]) + rest[1:]
        self.client.sendall(rest)
        return True


def _parse(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(method, target, headers)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
