"""What spec.slo asks, as the analysis takes it: no setting promotes a revision before the liveness probes the
operator renders into its pods could have restarted a pod that stopped answering."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_operator.decisions.analysis import AnalysisState, minimum_end
from moe_operator.decisions.probes import liveness_window_seconds
from moe_operator.decisions.render import pod_template
from moe_operator.decisions.slo import analysis_policy, bake_policy
from moe_operator.decisions.spec import parse_spec
from tests.unit.operator.samples import OWNER, spec

ADAPTERS = [{"name": "sql", "source": {"hostPath": {"path": "/data/loras/sql"}}}]
ENGINES = {
    "moe-runtime": {},
    "vllm": {"runtime__engine": "vllm", "runtime__image": "vllm/vllm-openai:v0.32.0", "adapters": ADAPTERS},
    "sglang": {
        "runtime__engine": "sglang",
        "runtime__image": "lmsysorg/sglang:v0.5.23",
        "adapters": ADAPTERS,
    },
}
SHORT_SLO = {
    "p99LatencySeconds": 2,
    "analysisIntervalSeconds": 2,
    "scrapeIntervalSeconds": 1,
    "measurements": 1,
}


def longest_liveness_window(parsed) -> float:
    containers = pod_template(OWNER.name, parsed)["spec"]["containers"]
    probes = [c["livenessProbe"] for c in containers]
    assert len(probes) == len(containers), "every serving container has a liveness probe"
    return max(liveness_window_seconds(probe) for probe in probes)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_shortest_analysis_outlasts_every_rendered_liveness_probe(engine):
    parsed = parse_spec(spec(slo={**SHORT_SLO, "bakeSeconds": 1}, **ENGINES[engine]))
    window = longest_liveness_window(parsed)
    assert window >= 40, "the window counts a period before the first probe and the last probe's timeout"
    assert analysis_policy(parsed).min_duration_s >= window


@settings(deadline=None)  # parses and renders a spec per example: slow on a busy machine
@given(
    interval=st.integers(min_value=2, max_value=120),
    measurements=st.integers(min_value=1, max_value=20),
    bake=st.integers(min_value=1, max_value=600),
    baseline_p99=st.none() | st.floats(min_value=0.01, max_value=100),
)
def test_no_slo_setting_ends_an_analysis_inside_the_liveness_window_and_a_bake_lasts_as_asked(
    interval, measurements, bake, baseline_p99
):
    slo = {
        "p99LatencySeconds": 5,
        "analysisIntervalSeconds": interval,
        "scrapeIntervalSeconds": 1,
        "measurements": measurements,
        "bakeSeconds": bake,
    }
    parsed = parse_spec(spec(slo=slo))
    window = longest_liveness_window(parsed)
    state = AnalysisState(started_at=0.0, baseline_p99_s=baseline_p99)
    end, _ = minimum_end(state, analysis_policy(parsed))
    assert end >= window
    assert bake_policy(parsed).measurements == max(1, round(bake / interval))
