"""The operator's startup, which kopf runs again (after a delay) when it fails."""

import socket
import urllib.request

import kubernetes.config
import kubernetes.config.kube_config
import pytest
from kubernetes.client.exceptions import ApiException

from moe_operator.manager import Manager, Options
from tests.unit.scripted_api import EMPTY_LIST, ScriptedApi


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_startup_that_failed_can_run_again_with_its_metrics_server(tmp_path, monkeypatch):
    failing_once = (500, {}, {"kind": "Status", "status": "Failure", "message": "etcd away", "code": 500})
    failed = []

    def answer(method, path, n):
        if failed:
            return EMPTY_LIST
        failed.append(path)
        return failing_once

    with ScriptedApi(answer) as api:
        kubeconfig = str(api.kubeconfig(tmp_path / "kubeconfig"))
        # the client reads KUBECONFIG once, when it is imported
        for module in (kubernetes.config, kubernetes.config.kube_config):
            monkeypatch.setattr(module, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
        port = free_port()
        manager = Manager(Options(namespaces=("ns",), workers=1, metrics_port=port))
        try:
            with pytest.raises(ApiException):
                manager.start()
            manager.start()  # kopf's retry of the startup activity
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                assert b"moe_operator_reconcile_total" in answer.read()
            assert manager.controller.started
        finally:
            manager.stop()
            if manager.metrics_server is not None:
                manager.metrics_server.shutdown()
                manager.metrics_server.server_close()
