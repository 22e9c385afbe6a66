"""The operator's start as kopf runs it: a start that failed half-way (the metrics port already bound) is
retried by kopf, and the retry must go through."""

import socket
import urllib.request

import kopf
import pytest

from moe_operator import handlers, manager
from moe_operator.manager import Options


class FlakyKube:
    """Lists fail `failures` times first, as an API server does while it initialises a new CRD's storage."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def list(self, kind, namespace, selector):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("429 Too Many Requests: storage is (re)initializing")
        return []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_failed_start_with_a_metrics_port_is_retried_and_then_serves(monkeypatch):
    monkeypatch.setattr(manager, "api_client", lambda connections: None)
    monkeypatch.setattr(manager, "Kube", lambda api: FlakyKube(failures=1))
    port = free_port()
    memo = kopf.Memo(options=Options(namespaces=("ns",), workers=1, metrics_port=port))
    settings = kopf.OperatorSettings()
    with pytest.raises(ConnectionError):
        handlers.start(settings=settings, memo=memo)
    try:
        handlers.start(settings=settings, memo=memo)  # kopf's retry of the startup activity
        assert memo.manager.controller.started
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert b"moe_operator_reconcile" in answer.read()
    finally:
        memo.manager.stop()
        memo.manager.metrics_server.shutdown()
        memo.manager.metrics_server.server_close()
