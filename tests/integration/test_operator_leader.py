"""Two operator replicas with leader election against the real API server: exactly one reconciles; when it
dies the other takes over; a clean stop hands the Lease over at once."""

from __future__ import annotations

import json

import pytest

from tests.integration.operator_support import OperatorProcess, small_md
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

FAST_LEASE = [
    "--leader-elect",
    "--leader-election-id=moe-test",
    "--leader-election-lease-duration=4",
    "--leader-election-renew-deadline=3",
    "--leader-election-retry-period=0.5",
]


def md(name: str) -> dict:
    return small_md(
        name,
        model={"family": "mixtral", "source": {"image": {"path": "/opt/m"}}},
        runtime={"image": "moe-runtime:1", "resources": {"gpu": 0}},
    )


def holder(models) -> str | None:
    found = models.kubectl("get", "lease", "moe-test", "-o", "json", check=False)
    return json.loads(found.stdout)["spec"].get("holderIdentity") if found.returncode == 0 else None


def reconciled(models, name: str) -> bool:
    return bool((models.get(name) or {}).get("status", {}).get("stableRevision"))


def test_one_leader_reconciles_and_the_other_takes_over(cluster, models, created, tmp_path):
    args = ["--namespace", models.namespace, "--leader-election-namespace", models.namespace, *FAST_LEASE]
    replicas = {
        name: OperatorProcess(cluster, args, tmp_path / f"{name}.log", env={"POD_NAME": name})
        for name in ("replica-a", "replica-b")
    }
    for replica in replicas.values():
        replica.start()
    try:
        leader = wait_for(lambda: holder(models), timeout=60, what="a leader")
        follower = next(name for name in replicas if name != leader)
        created(md("first"))
        wait_for(lambda: reconciled(models, "first"), timeout=60, what="the leader to reconcile")
        assert "became the leader" in replicas[leader].log()
        assert "became the leader" not in replicas[follower].log()
        assert "phase" not in replicas[follower].log(), "the follower wrote nothing"

        replicas[leader].stop(kill=True)  # no clean hand-over: the Lease must expire
        wait_for(lambda: holder(models) == follower, timeout=60, what=f"{follower} to take the Lease")
        created(md("second"))
        wait_for(lambda: reconciled(models, "second"), timeout=60, what="the new leader to reconcile")

        replicas[leader].start()  # back as a candidate; a clean stop of the leader hands over at once
        replicas[follower].stop()
        wait_for(lambda: holder(models) == leader, timeout=30, what="the Lease handed over on a clean stop")
    finally:
        for replica in replicas.values():
            replica.stop()
