from hypothesis import given
from hypothesis import strategies as st

from moe_operator.decisions.events import Event, condition_flips
from moe_operator.decisions.promdata import NO_DATA_REASONS


def status(ready="False", degraded="False", degraded_reason="AsExpected", message="stuck"):
    return {
        "conditions": [
            {"type": "Ready", "status": ready, "reason": "r", "message": "3/3 ready"},
            {"type": "Progressing", "status": "True", "reason": "r", "message": "m"},
            {"type": "Degraded", "status": degraded, "reason": degraded_reason, "message": message},
        ]
    }


def test_nothing_to_say_when_nothing_flipped():
    assert condition_flips(status(), status()) == []
    assert condition_flips(status(ready="True"), status(ready="True")) == []


def test_ready_and_degraded_flips():
    assert condition_flips(status(), status(ready="True")) == [Event("Normal", "Ready", "3/3 ready")]
    degraded = status(degraded="True", degraded_reason="ProgressDeadlineExceeded")
    assert condition_flips(status(), degraded) == [Event("Warning", "ProgressDeadlineExceeded", "stuck")]
    assert condition_flips(degraded, degraded) == [], "a condition that stays broken is reported once"
    assert condition_flips(degraded, status()) == [
        Event("Normal", "Recovered", "no longer degraded (ProgressDeadlineExceeded is over)")
    ]


def test_a_new_reason_or_message_while_degraded_is_news():
    before = status(degraded="True", degraded_reason="ImagePullBackOff", message="pod a")
    after = status(degraded="True", degraded_reason="CrashLoopBackOff", message="pod a")
    assert [e.reason for e in condition_flips(before, after)] == ["CrashLoopBackOff"]


def test_first_status_of_a_new_object():
    assert condition_flips({}, status(ready="True")) == [Event("Normal", "Ready", "3/3 ready")]


def metrics(status, reason):
    return {
        "conditions": [{"type": "MetricsAvailable", "status": status, "reason": reason, "message": "refused"}]
    }


def test_missing_metrics_are_reported_once_and_their_return_too():
    down = metrics("False", "PrometheusUnavailable")
    assert [e.reason for e in condition_flips(metrics("True", "QueueDepthRead"), down)] == [
        "PrometheusUnavailable"
    ]
    assert condition_flips(down, down) == []
    assert [e.reason for e in condition_flips(down, metrics("True", "QueueDepthRead"))] == [
        "MetricsAvailable"
    ]


@given(st.lists(st.sampled_from(NO_DATA_REASONS), min_size=1, max_size=8))
def test_one_outage_is_one_warning_whatever_reasons_it_goes_through(outage):
    # e.g. Prometheus restarted: unreachable, then up but not scraped yet (no series, then stale ones)
    previous, warnings = metrics("True", "QueueDepthRead"), []
    for reason in outage:
        current = metrics("False", reason)
        warnings += [e.reason for e in condition_flips(previous, current) if e.type == "Warning"]
        previous = current
    assert warnings == [outage[0]]
    assert [e.reason for e in condition_flips(previous, metrics("True", "QueueDepthRead"))] == [
        "MetricsAvailable"
    ]


def test_a_new_object_without_data_is_warned_about():
    assert [e.reason for e in condition_flips({}, metrics("False", "NoSeries"))] == ["NoSeries"]
