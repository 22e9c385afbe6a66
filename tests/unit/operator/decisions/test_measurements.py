"""What the measurement loop reads for a ModelDeployment, and when (pure)."""

from __future__ import annotations

from moe_operator.decisions.measurements import (
    ROUTERS_AT_ZERO_S,
    ROUTERS_INTERVAL_S,
    AdapterStatesRead,
    LastReads,
    QueueDepthRead,
    RouterDemandRead,
    WindowRead,
    due_reads,
    subject,
)
from moe_operator.decisions.spec import parse_spec
from moe_operator.timestamps import to_time
from tests.unit.operator.samples import spec

NOW = 1_800_000_000.0
SLO = {"maxRelativeIncrease": 0.2, "analysisIntervalSeconds": 10, "scrapeIntervalSeconds": 2}
ADAPTER = {"name": "sql", "source": {"pvc": {"claimName": "w", "path": "sql"}}}


def canary(phase: str, **extra) -> dict:
    return {
        "stableRevision": "old",
        "canary": {"revision": "new", "phase": phase, "startTime": to_time(NOW - 100), "readyTime": to_time(NOW - 60),
                   "previousRevision": "old", **extra},
    }  # fmt: skip


def test_nothing_to_read_without_autoscaling_adapters_or_an_analysis():
    assert due_reads(parse_spec(spec()), {}, NOW, LastReads(), frozenset()) == []
    assert subject(parse_spec(spec(slo=SLO)), canary("Starting")) is None


def test_periodic_reads_fall_due_by_their_intervals():
    md = parse_spec(spec(autoscaling={"enabled": True, "intervalSeconds": 15}, adapters=[ADAPTER]))
    first = due_reads(md, {}, NOW, LastReads(), frozenset())
    assert [type(r) for r in first] == [QueueDepthRead, AdapterStatesRead]
    assert due_reads(md, {}, NOW + 5, LastReads(NOW, NOW), frozenset()) == []
    assert [type(r) for r in due_reads(md, {}, NOW + 10, LastReads(NOW, NOW), frozenset())] == [
        AdapterStatesRead
    ]
    assert [type(r) for r in due_reads(md, {}, NOW + 15, LastReads(NOW, NOW), frozenset())] == [
        QueueDepthRead,
        AdapterStatesRead,
    ]


def test_canary_windows_are_read_once_measurable_and_not_again():
    md = parse_spec(spec(slo=SLO))
    status = canary("Analyzing")
    # ready 60 s ago, 10 s windows read 4 s (two scrapes) after they end: windows 1-5 are measurable
    reads = due_reads(md, status, NOW, LastReads(), frozenset())
    assert [r.index for r in reads] == [1, 2, 3, 4, 5]
    assert all(
        isinstance(r, WindowRead) and (r.candidate, r.baseline, r.recorded) == ("new", "old", None)
        for r in reads
    )
    assert reads[0].end == NOW - 50 and reads[0].started_at == NOW - 60
    assert [
        r.index for r in due_reads(md, status, NOW, LastReads(), frozenset({("new", 1), ("new", 2)}))
    ] == [3, 4, 5]


def test_a_bake_reads_the_new_stable_revision_against_the_previous_ones_span():
    md = parse_spec(spec(slo=SLO))
    status = canary("Baking", promotedTime=to_time(NOW - 30))
    running = subject(md, status)
    assert (running.kind, running.candidate, running.baseline) == ("bake", "new", "old")
    assert running.recorded == (NOW - 60, NOW - 30)
    reads = due_reads(md, status, NOW, LastReads(), frozenset())
    assert [r.index for r in reads] == [1, 2] and reads[0].started_at == NOW - 30


def test_the_routers_are_read_with_scale_to_zero_often_at_zero_and_never_without_routing():
    zero = parse_spec(spec(routing={"scaleToZero": {"idleSeconds": 60}}))
    assert [type(r) for r in due_reads(zero, {}, NOW, LastReads(), frozenset())] == [RouterDemandRead]
    last = LastReads(router_demand=NOW)
    running, at_zero = {"desiredReplicas": 2}, {"desiredReplicas": 0}
    assert due_reads(zero, running, NOW + ROUTERS_AT_ZERO_S, last, frozenset()) == []
    assert due_reads(zero, running, NOW + ROUTERS_INTERVAL_S, last, frozenset()) == [RouterDemandRead()]
    assert due_reads(zero, at_zero, NOW + ROUTERS_AT_ZERO_S, last, frozenset()) == [RouterDemandRead()]
    # with autoscaling, held requests count with the pods' queues: read without scale to zero too
    routed = parse_spec(spec(routing={}, autoscaling={"enabled": True}))
    assert RouterDemandRead() in due_reads(routed, {}, NOW, LastReads(), frozenset())
    assert due_reads(parse_spec(spec(routing={})), {}, NOW, LastReads(), frozenset()) == []
