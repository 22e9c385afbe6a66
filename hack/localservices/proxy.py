"""The listeners: one loopback port per Service port, each connection piped to one endpoint in turn."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from localservices.table import ServicePort, endpoints_of, proxied_ports, services_file

log = logging.getLogger("localservices")
CONNECT_TIMEOUT_S = 5.0


class Listener:
    def __init__(
        self, port: ServicePort, endpoints: Callable[[], list[str]], dial: Callable[[str], str]
    ) -> None:
        self.port, self._endpoints, self._dial = port, endpoints, dial
        self._turn = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        endpoints = self._endpoints()
        if not endpoints:
            writer.close()  # no endpoint: kube-proxy rejects the connection
            return
        self._turn += 1
        target = self._dial(endpoints[self._turn % len(endpoints)])
        host, _, number = target.rpartition(":")
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(number)), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as err:
            log.info("%s: %s unreachable: %s", self.port.key, target, err)
            writer.close()
            return
        await _splice(reader, writer, upstream_reader, upstream_writer)


async def _splice(reader, writer, upstream_reader, upstream_writer) -> None:
    """Both directions until both ended; an end by EOF is passed on as EOF (half-close), an end by error
    closes both sides at once."""
    pipes = {
        asyncio.ensure_future(_pipe(reader, upstream_writer)),
        asyncio.ensure_future(_pipe(upstream_reader, writer)),
    }
    try:
        while pipes:
            done, pipes = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            if not all(task.result() for task in done):
                break
    finally:
        for task in pipes:
            task.cancel()
        for side in (writer, upstream_writer):
            side.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """Copies until EOF (True) or an error (False)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        return True
    except (ConnectionError, OSError):
        return False


class ServiceProxy:
    """Keeps one listener per proxied Service port, and the services file in step with them."""

    def __init__(self, services_path: Path, dial: Callable[[str], str]) -> None:
        self.services_path, self._dial = services_path, dial
        self.services: dict[str, dict] = {}  # "namespace/name" -> Service
        self.slices: dict[str, dict] = {}  # "namespace/name" -> EndpointSlice
        self._listeners: dict[ServicePort, tuple[Listener, int]] = {}
        self._written: dict | None = None

    async def sync(self) -> None:
        wanted = set(proxied_ports(self.services.values()))
        for port in set(self._listeners) - wanted:
            self._listeners.pop(port)[0].close()
        for port in wanted - set(self._listeners):
            listener = Listener(port, lambda p=port: endpoints_of(p, self.slices.values()), self._dial)
            self._listeners[port] = (listener, await listener.start())
            log.info("%s on 127.0.0.1:%d", port.key, self._listeners[port][1])
        content = services_file({port: local for port, (_, local) in self._listeners.items()})
        if content != self._written:
            _write_atomically(self.services_path, content)
            self._written = content

    def close(self) -> None:
        for listener, _ in self._listeners.values():
            listener.close()
        _write_atomically(self.services_path, {})


def _write_atomically(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        json.dump(content, out, indent=1)
        out.write("\n")
    os.replace(tmp, path)
