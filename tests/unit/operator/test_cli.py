import pytest

from moe_operator.__main__ import options, parse_args


def test_defaults_serve_every_namespace_without_leader_election():
    args = parse_args(["run"])
    assert args.namespaces == [] and args.prometheus_url is None and not args.leader_elect
    assert options(args).workers > 1


def test_namespaces_and_flags():
    args = parse_args(
        [
            "run", "-n", "a", "--namespace", "b", "--prometheus-url", "http://prom:9090",
            "--prometheus-bearer-token-file", "/var/run/token", "--leader-elect", "--leader-election-id", "moe",
            "--metrics-port", "9100", "--policy-file", "/etc/policy.yaml", "--liveness", "http://0.0.0.0:8080/healthz",
        ]
    )  # fmt: skip
    chosen = options(args)
    assert chosen.namespaces == ("a", "b")
    assert (chosen.prometheus_url, chosen.prometheus_bearer_token_file) == (
        "http://prom:9090",
        "/var/run/token",
    )
    assert (chosen.leader_elect, chosen.leader_election_id, chosen.metrics_port) == (True, "moe", 9100)
    assert chosen.policy_file == "/etc/policy.yaml" and args.liveness == "http://0.0.0.0:8080/healthz"


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("MOE_OPERATOR_PROMETHEUS_URL", "http://env:9090")
    monkeypatch.setenv("MOE_OPERATOR_POLICY_FILE", "/p.yaml")
    args = parse_args(["run"])
    assert (args.prometheus_url, args.policy_file) == ("http://env:9090", "/p.yaml")


@pytest.mark.parametrize("argv", [["run", "-n", "a", "--all-namespaces"], [], ["run", "--peering", "x"]])
def test_contradictions_and_retired_flags_are_refused(argv):
    with pytest.raises(SystemExit):
        parse_args(argv)


def test_engine_images_default_to_this_release_and_take_overrides():
    import importlib.metadata

    defaults = options(parse_args(["run"])).images
    assert (
        defaults.by_engine["moe-runtime"]
        == f"ghcr.io/moedeploy/runtime:{importlib.metadata.version('moedeploy')}"
    )
    assert defaults.by_engine["vllm"].startswith("vllm/vllm-openai:")
    chosen = options(parse_args(["run", "--engine-image", "vllm=registry.local/vllm:1", "--engine-image",
                                 "moe-runtime=registry.local/runtime:2"])).images  # fmt: skip
    assert (chosen.by_engine["vllm"], chosen.helper) == ("registry.local/vllm:1", "registry.local/runtime:2")


@pytest.mark.parametrize("value", ["vllm", "tgi=image:1", "vllm="])
def test_a_bad_engine_image_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        parse_args(["run", "--engine-image", value])
    assert "--engine-image" in capsys.readouterr().err
