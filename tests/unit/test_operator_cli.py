import pytest

from moe_operator.__main__ import parse_args


def test_defaults_serve_every_namespace_standalone():
    args = parse_args(["run"])
    assert args.namespaces == [] and args.peering is None and args.prometheus_url is None


def test_namespaces_and_flags():
    args = parse_args(
        [
            "run",
            "-n",
            "a",
            "--namespace",
            "b",
            "--prometheus-url",
            "http://prom:9090",
            "--peering",
            "moe",
            "--priority",
            "10",
            "--liveness",
            "http://0.0.0.0:8080/healthz",
        ]
    )
    assert args.namespaces == ["a", "b"]
    assert (args.prometheus_url, args.peering, args.priority) == ("http://prom:9090", "moe", 10)
    assert args.liveness == "http://0.0.0.0:8080/healthz"


def test_prometheus_url_from_the_environment(monkeypatch):
    monkeypatch.setenv("MOE_OPERATOR_PROMETHEUS_URL", "http://env:9090")
    assert parse_args(["run"]).prometheus_url == "http://env:9090"


@pytest.mark.parametrize(
    "argv", [["run", "-n", "a", "--all-namespaces"], ["run", "--standalone", "--peering", "x"], []]
)
def test_contradictions_are_refused(argv):
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_peering_replicas_draw_distinct_priorities_unless_one_is_given():
    from moe_operator.__main__ import peering_priority

    assert peering_priority(7) == 7
    drawn = {peering_priority(None) for _ in range(20)}
    assert len(drawn) > 1 and all(p > 0 for p in drawn)
