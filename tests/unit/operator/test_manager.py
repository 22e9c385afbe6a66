"""The operator's start as kopf runs it: a start that failed half-way (the metrics port already bound) is
retried by kopf, and the retry must go through."""

import threading
import time
import urllib.request

import kopf
import pytest

from moe_operator import handlers, manager
from moe_operator.manager import Options
from tests.integration.runtime_server.harness import free_port
from tests.waiting import wait_for


class FlakyKube:
    """Lists fail `failures` times first, as an API server does while it initialises a new CRD's storage."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def list(self, kind, namespace, selector):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("429 Too Many Requests: storage is (re)initializing")
        return []


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


class ListingKube:
    """The lists an API server answers; changing `items` is a change the watch never reports."""

    def __init__(self) -> None:
        self.items: dict[str, list[dict]] = {}

    def list(self, kind, namespace, selector):
        return [dict(item) for item in self.items.get(kind, [])]


def pod(name: str, version: str, owner: str = "gone") -> dict:
    labels = {"moedeploy.dev/model-deployment": owner}
    meta = {
        "name": name,
        "namespace": "ns",
        "uid": f"uid-{name}",
        "resourceVersion": version,
        "labels": labels,
    }
    return {"kind": "Pod", "metadata": meta}


def quiet_manager(monkeypatch, kube, **options) -> manager.Manager:
    monkeypatch.setattr(manager, "api_client", lambda connections: None)
    monkeypatch.setattr(manager, "Kube", lambda api: kube)
    return manager.Manager(Options(namespaces=("ns",), workers=1, **options))


def test_objects_deleted_during_a_watch_gap_leave_the_cache_at_the_next_listing(monkeypatch):
    """After a 410 Gone kopf lists again but reports no DELETED: a vanished pod must not count for ever."""
    kube = ListingKube()
    kube.items["Pod"] = [pod("p-1", "a7"), pod("p-2", "c3")]
    running = quiet_manager(monkeypatch, kube, relist_seconds=0.2)
    running.start()
    try:
        assert running.cache.get("Pod", "ns", "p-1") is not None
        kube.items["Pod"] = [pod("p-2", "c3")]  # p-1 went while the watch was away
        wait_for(lambda: running.cache.get("Pod", "ns", "p-1") is None, timeout=10, what="p-1 evicted")
        assert running.cache.get("Pod", "ns", "p-2") is not None
    finally:
        running.stop()


def test_a_late_watch_event_does_not_undo_a_write_whatever_the_resource_versions_look_like(monkeypatch):
    kube = ListingKube()
    running = quiet_manager(monkeypatch, kube)
    running.observe("Pod", "ADDED", pod("p", "9"))
    running.cache.put(pod("p", "10") | {"spec": {"written": True}})  # the answer to the operator's write
    running.observe("Pod", "MODIFIED", pod("p", "a1"))  # older, late: "a1" is no integer
    assert running.cache.get("Pod", "ns", "p")["spec"] == {"written": True}


class BlockingReconciler:
    """A pass that runs until the test lets it end."""

    def __init__(self, *args, **kwargs) -> None:
        self.running, self.release = threading.Event(), threading.Event()

    def reconcile(self, namespace, name):
        self.running.set()
        self.release.wait(timeout=30)
        from moe_operator.reconcile.reconciler import Result

        return Result()


def test_a_stopping_leader_hands_the_lease_over_only_after_its_workers_stopped(monkeypatch):
    """Released first, the Lease let a new leader start while the old one's pass still wrote (up to 30 s)."""
    from moe_operator.machinery.leader import LeaderElector, LeaseTimings
    from tests.unit.operator.machinery.leases import FakeLeases

    kube, leases = ListingKube(), FakeLeases()
    md = {
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns", "uid": "u", "resourceVersion": "1"},
    }
    kube.items["ModelDeployment"] = [md]
    monkeypatch.setattr(manager, "Reconciler", BlockingReconciler)
    monkeypatch.setattr(manager.client, "CoordinationV1Api", lambda api: leases)
    monkeypatch.setenv("POD_NAME", "leader")
    timings = LeaseTimings(lease_duration=1.5, renew_deadline=1.0, retry_period=0.1)
    running = quiet_manager(
        monkeypatch, kube, leader_elect=True, leader_election_namespace="ns", leader_election_timings=timings
    )
    successor = LeaderElector(leases, "ns", "lease", "successor", lambda: None, lambda: None, timings=timings)
    running.start()
    stopper = threading.Thread(target=running.stop)
    try:
        wait_for(running.reconciler.running.is_set, timeout=10, what="a pass under way")
        successor.start()
        stopper.start()
        # the pass goes on for three lease durations: the Lease stays ours (renewed), the successor waits
        until = time.monotonic() + 3 * timings.lease_duration
        while time.monotonic() < until:
            assert leases.holder() == "leader" and not successor.leading
            time.sleep(0.05)
        assert stopper.is_alive()
    finally:
        running.reconciler.release.set()
    stopper.join(timeout=10)
    wait_for(lambda: successor.leading, timeout=10, what="the successor to lead once the pass ended")
    successor.stop()
