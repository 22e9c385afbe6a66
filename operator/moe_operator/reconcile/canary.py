"""Measuring a canary through Prometheus for the rollout: the analysis state lives in the canary's status,
the windows are measured as they fall due, and the analysis module's verdict becomes the rollout's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from moe_operator.decisions import analysis
from moe_operator.decisions.promql import SLOQueries
from moe_operator.decisions.rollout import Canary, Verdict
from moe_operator.decisions.spec import ModelDeploymentSpec
from moe_operator.io.metrics import OperatorMetrics


def slo_of(spec: ModelDeploymentSpec) -> analysis.SLO:
    slo = spec.slo
    assert slo is not None
    return analysis.SLO(
        p99_latency_s=slo.p99_latency_seconds,
        max_error_ratio=slo.max_error_ratio,
        interval_s=slo.analysis_interval_seconds,
        initial_delay_s=slo.initial_delay_seconds,
        measurements=slo.measurements,
        failure_limit=slo.failure_limit,
        inconclusive_limit=slo.inconclusive_limit,
        error_limit=slo.error_limit,
        on_inconclusive=slo.on_inconclusive,
        min_requests=slo.min_requests,
        on_failure="Rollback" if spec.rollout.auto_rollback else "Hold",
    )


class Analyzer:
    def __init__(self, prometheus=None, metrics: OperatorMetrics | None = None) -> None:
        self._prometheus = prometheus
        self._metrics = metrics or OperatorMetrics()

    def analyse(
        self, md: Mapping[str, Any], spec: ModelDeploymentSpec, canary: Canary, now: float
    ) -> tuple[Canary, Verdict, float | None]:
        if self._prometheus is None:
            return (
                canary,
                Verdict("Hold", "AnalysisUnavailable", "the operator runs without --prometheus-url"),
                None,
            )
        slo = slo_of(spec)
        state = analysis.AnalysisState.from_status(
            canary.analysis, started_at=canary.ready_at or canary.started_at
        )
        namespace, name = md["metadata"]["namespace"], md["metadata"]["name"]
        queries = SLOQueries(spec.slo.p99_latency_query, spec.slo.error_ratio_query)

        def measure(window: analysis.Window):
            return self._prometheus.canary_window(
                namespace, name, canary.revision, window.end, slo.interval_s, queries
            )

        after, decided = analysis.analyse(state, slo, now, measure)
        self._count(state, after)
        message = decided.message
        if after.recent:
            message = f"{message}; last window: {after.recent[-1].message}"
        failures = tuple(o.to_status() for o in after.failures)
        behind = analysis.due_windows(after, slo, now)
        next_due = (
            now
            if behind and decided.action not in ("Promote", "Rollback")
            else analysis.next_window_end(after, slo)
        )
        verdict = Verdict(decided.action, decided.reason, message, failures)
        return replace(canary, analysis=after.to_status()), verdict, next_due

    def _count(self, before: analysis.AnalysisState, after: analysis.AnalysisState) -> None:
        for kind, field in (
            ("Passed", "passed"),
            ("Failed", "failed"),
            ("Inconclusive", "inconclusive"),
            ("Errored", "errored"),
        ):
            new = getattr(after, field) - getattr(before, field)
            if new > 0:
                self._metrics.canary_outcomes.labels(kind).inc(new)
