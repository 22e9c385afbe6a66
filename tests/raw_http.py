"""HTTP/1.1 over a bare socket, for tests about connections themselves (keep-alive, Connection: close), which
pooling clients hide."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)


class RawConnection:
    """One TCP connection; each `request` sends on it and reads one whole answer."""

    def __init__(self, host: str, port: int, timeout_s: float = 120) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, body: dict | None = None) -> Answer:
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(payload)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + payload)
        return self.read_answer()

    def read_answer(self) -> Answer:
        head = self._read_until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._read_until(b"\r\n"), 16)
                chunk = self._read_exactly(size + 2)[:-2]
                if size == 0:
                    break
                body += chunk
        else:
            body = self._read_exactly(int(headers.get("content-length", 0)))
        return Answer(status, headers, body)

    def closed_by_peer(self, within_s: float) -> bool:
        """Whether the other side closes the connection within `within_s` (sending nothing more)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            if not data:
                return True
            self._buffer += data
        return False

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        found, _, self._buffer = self._buffer.partition(marker)
        return found

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        found, self._buffer = self._buffer[:size], self._buffer[size:]
        return found

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the peer closed the connection")
        self._buffer += data
