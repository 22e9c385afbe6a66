from moe_operator.events import Event, condition_flips


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
    assert [e.reason for e in condition_flips(down, metrics("False", "NoSeries"))] == ["NoSeries"]
    assert [e.reason for e in condition_flips(down, metrics("True", "QueueDepthRead"))] == [
        "MetricsAvailable"
    ]
