"""The operator's API calls give up on a server that accepts a connection and never answers."""

import socket
import threading
import time

import pytest
from kubernetes import client

from moe_operator.io.kube import Kube, api_client


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never sends a byte (a half-open API server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_call_to_a_silent_server_times_out_without_retrying_the_sent_request(silent_server):
    configuration = client.Configuration(host=silent_server)
    kube = Kube(api_client(connections=2, configuration=configuration), timeout=(1.0, 1.0))
    started = time.monotonic()
    with pytest.raises(Exception) as failure:
        kube.get("Deployment", "ns", "d")
    elapsed = time.monotonic() - started
    assert "timed out" in str(failure.value).lower() or "timeout" in type(failure.value).__name__.lower()
    assert elapsed < 2.5, f"gave up after {elapsed:.1f}s: the read was retried"


def test_paths():
    from moe_operator.io.kube import path

    assert path("Deployment", "ns", "d") == "/apis/apps/v1/namespaces/ns/deployments/d"
    assert (
        path("ModelDeployment", "ns", "m", "status")
        == "/apis/moedeploy.dev/v1alpha1/namespaces/ns/modeldeployments/m/status"
    )
    assert path("Pod", None) == "/api/v1/pods"


def test_a_read_answered_429_with_retry_after_is_tried_again_as_client_go_does():
    """kube-apiserver answers 429 (Retry-After: 1) to the first list of a CRD whose watch cache is starting:
    an operator started just after its CRD was installed must not fail on it."""
    from tests.unit.operator.scripted_api import CACHE_STARTING, EMPTY_LIST, ScriptedApi

    with ScriptedApi(lambda method, path, n: CACHE_STARTING if n == 0 else EMPTY_LIST) as api:
        kube = Kube(api_client(connections=2, configuration=client.Configuration(host=api.url)))
        assert kube.list("ModelDeployment", "ns") == []
        assert api.requests == [("GET", "/apis/moedeploy.dev/v1alpha1/namespaces/ns/modeldeployments")] * 2


def test_a_replica_that_does_not_lead_sends_no_write_but_still_reads():
    from moe_operator.machinery.errors import NotLeader
    from tests.unit.operator.scripted_api import EMPTY_LIST, ScriptedApi

    leading = threading.Event()
    with ScriptedApi(lambda method, path, n: EMPTY_LIST) as api:
        kube = Kube(
            api_client(connections=2, configuration=client.Configuration(host=api.url)),
            may_write=leading.is_set,
        )
        body = {"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
        for write in (
            lambda: kube.create(body),
            lambda: kube.apply(body),
            lambda: kube.delete("ConfigMap", "ns", "c"),
        ):
            with pytest.raises(NotLeader):
                write()
        assert kube.list("ConfigMap", "ns") == []
        assert [method for method, _ in api.requests] == ["GET"], "nothing written went out"
        leading.set()
        kube.create(body)
        assert [method for method, _ in api.requests] == ["GET", "POST"]
