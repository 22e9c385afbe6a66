"""The sidecar's HTTP endpoints: /health (its loop runs), /ready (every listed adapter was loaded into the running
engine, or failed to), /metrics (the per-adapter series of runtime/metrics.py, same names and labels)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from moe_runtime.adapter_sync.sync import Syncer

LOADED = "moe_runtime_lora_adapter_loaded"
LOAD_ERROR = "moe_runtime_lora_adapter_load_error"
LOAD_FAILURES = "moe_runtime_lora_load_failures"
STALL_AFTER_S = 60.0  # /health fails when the loop has not finished a round for this long


class AdapterCollector:
    def __init__(self, syncer: Syncer) -> None:
        self._syncer = syncer

    def collect(self):
        loaded = GaugeMetricFamily(LOADED, "1 when the adapter is loaded in the engine", labels=["adapter"])
        error = GaugeMetricFamily(
            LOAD_ERROR, "1 while the adapter's last load failed, by reason", labels=["adapter", "reason"]
        )
        for name, state in sorted(self._syncer.snapshot.states.items()):
            loaded.add_metric([name], 1.0 if state.loaded else 0.0)
            if state.error:
                error.add_metric([name, state.error], 1.0)
        failures = CounterMetricFamily(
            LOAD_FAILURES, "Failed loads of an adapter", labels=["adapter", "reason"]
        )
        for (name, reason), count in sorted(self._syncer.failure_counts.items()):
            failures.add_metric([name, reason], count)
        return [loaded, error, failures]


def make_server(
    host: str, port: int, syncer: Syncer, clock: Callable[[], float] = time.time
) -> ThreadingHTTPServer:
    registry = CollectorRegistry()
    registry.register(AdapterCollector(syncer))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/metrics":
                return self._send(200, generate_latest(registry), "text/plain; version=0.0.4")
            if self.path == "/health":
                stalled = clock() - syncer.last_round > STALL_AFTER_S
                return self._send(503 if stalled else 200, b"stalled\n" if stalled else b"ok\n")
            if self.path == "/ready":
                now = syncer.snapshot
                body = {
                    "ready": now.settled,
                    "adapters": {
                        name: {"loaded": s.loaded, "error": s.error} for name, s in sorted(now.states.items())
                    },
                }
                return self._send(200 if now.settled else 503, json.dumps(body).encode(), "application/json")
            self._send(404, b"not found\n")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # probes every few seconds would flood the log
            pass

    return ThreadingHTTPServer((host, port), Handler)
