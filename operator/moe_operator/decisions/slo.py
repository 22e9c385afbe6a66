"""What `spec.slo` asks, as the analysis takes it: the objectives a revision is judged by (judge.py), how long
and how many windows (analysis.py), the delay before a window is read and how long a promoted revision bakes.
Pure."""

from __future__ import annotations

from moe_operator.decisions.analysis import AnalysisPolicy
from moe_operator.decisions.judge import Objectives
from moe_operator.decisions.probes import LIVENESS_WINDOW_SECONDS
from moe_operator.decisions.spec import SLO, ModelDeploymentSpec

BAKE_INTERVALS = 3  # the default bake: this many analysis windows


def objectives(slo: SLO) -> Objectives:
    return Objectives(
        p99_latency_s=slo.p99_latency_seconds,
        ttft_p99_s=slo.ttft_p99_seconds,
        tpot_p99_s=slo.time_per_output_token_p99_seconds,
        max_relative_increase=slo.max_relative_increase,
        max_error_ratio=slo.max_error_ratio,
        min_requests=slo.min_requests,
    )


def metric_delay(slo: SLO) -> float:
    return (
        slo.metric_delay_seconds if slo.metric_delay_seconds is not None else 2 * slo.scrape_interval_seconds
    )


def bake_seconds(slo: SLO) -> float:
    return (
        slo.bake_seconds if slo.bake_seconds is not None else BAKE_INTERVALS * slo.analysis_interval_seconds
    )


def analysis_policy(spec: ModelDeploymentSpec) -> AnalysisPolicy:
    slo = spec.slo
    assert slo is not None
    return AnalysisPolicy(
        interval_s=slo.analysis_interval_seconds,
        initial_delay_s=slo.initial_delay_seconds,
        metric_delay_s=metric_delay(slo),
        measurements=slo.measurements,
        failure_limit=slo.failure_limit,
        inconclusive_limit=slo.inconclusive_limit,
        error_limit=slo.error_limit,
        on_inconclusive=slo.on_inconclusive,
        on_failure="Rollback" if spec.rollout.auto_rollback else "Hold",
        min_duration_s=LIVENESS_WINDOW_SECONDS,
    )


def bake_policy(spec: ModelDeploymentSpec) -> AnalysisPolicy:
    """A bake counts windows the same way, for as long as it lasts; there is nothing to settle against a live
    baseline, and failing it always rolls back (the revision is already serving everyone). It is not stretched to
    the pods' liveness window as a canary is: it compares the revision with the figures its predecessor had, and
    the longer it runs the more the load moves away from them (a scale-in after promotion doubled the time to
    first token of the demo's good revision and rolled it back in the ninth window of a stretched bake)."""
    slo = spec.slo
    assert slo is not None
    windows = max(1, round(bake_seconds(slo) / slo.analysis_interval_seconds))
    return AnalysisPolicy(
        interval_s=slo.analysis_interval_seconds,
        metric_delay_s=metric_delay(slo),
        measurements=windows,
        failure_limit=slo.failure_limit,
        inconclusive_limit=windows,
        error_limit=slo.error_limit,
        on_inconclusive="Hold",
        on_failure="Rollback" if spec.rollout.auto_rollback else "Hold",
        min_latencies=0,
    )
