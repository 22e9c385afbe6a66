"""What spec.routing renders: the router and its identity, the track Services, the client Service's switch."""

from hypothesis import given
from hypothesis import strategies as st

from moe_operator.decisions.naming import COMPONENT_LABEL, ENGINE, ROUTER, Owner, selector_string
from moe_operator.decisions.render import deployment, render_revision, service
from moe_operator.decisions.routing import router_deployment, router_grace_seconds, routing_children
from moe_operator.decisions.spec import parse_spec
from tests.unit.operator.samples import OWNER, spec


def matches(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def by_kind(objects):
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_routing_adds_a_router_with_its_own_identity_and_a_headless_service_per_track():
    children = by_kind(routing_children(OWNER, parse_spec(spec(routing={}))))
    name = f"{OWNER.name}-router"
    assert set(children) == {
        ("ServiceAccount", name), ("Role", name), ("RoleBinding", name), ("Deployment", name),
        ("Service", f"{OWNER.name}-stable"), ("Service", f"{OWNER.name}-canary"),
    }  # fmt: skip
    for child in children.values():
        assert child["metadata"]["ownerReferences"] == [OWNER.reference()]
    role = children["Role", name]
    own = [r for r in role["rules"] if "modeldeployments" in r["resources"]]
    assert own == [
        {
            "apiGroups": ["moedeploy.dev"],
            "resources": ["modeldeployments"],
            "verbs": ["get", "list", "watch"],
            "resourceNames": [OWNER.name],
        }
    ]
    assert not any(set(r["verbs"]) - {"get", "list", "watch"} for r in role["rules"]), "the router only reads"
    binding = children["RoleBinding", name]
    assert binding["roleRef"]["name"] == name and binding["subjects"][0]["name"] == name
    pod = children["Deployment", name]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name and pod["automountServiceAccountToken"] is True
    for track in ("stable", "canary"):
        track_service = children["Service", f"{OWNER.name}-{track}"]
        assert track_service["spec"]["clusterIP"] == "None"
        assert track_service["spec"]["selector"]["moedeploy.dev/track"] == track


def test_the_router_runs_the_runtime_image_with_the_spec_settings():
    parsed = parse_spec(
        spec(
            model__name="qwen",
            routing={
                "strategy": "LeastLoad",
                "replicas": 3,
                "holdTimeoutSeconds": 42,
                "nodeSelector": {"pool": "cpu"},
            },
        )
    )
    router = router_deployment(OWNER, parsed)
    assert router["spec"]["replicas"] == 3
    pod = router["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == parsed.runtime.image
    assert container["command"] == ["python", "-m", "moe_runtime", "router"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (
        env["MOE_RUNTIME_ROUTER_STRATEGY"] == "LeastLoad" and env["MOE_RUNTIME_ROUTER_HOLD_TIMEOUT"] == "42"
    )
    assert (
        env["MOE_RUNTIME_SERVED_MODEL_NAME"] == "qwen"
        and env["MOE_RUNTIME_ROUTER_MODEL_DEPLOYMENT"] == OWNER.name
    )
    assert pod["nodeSelector"] == {"pool": "cpu"} and "nvidia.com/gpu" not in str(container["resources"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


@given(hold=st.integers(1, 3600), timeout=st.integers(1, 3600), drain=st.integers(0, 300))
def test_a_stopping_router_has_time_to_answer_a_request_it_held_then_sent(hold, timeout, drain):
    raw = spec(routing={"holdTimeoutSeconds": hold})
    raw["runtime"]["drainDelaySeconds"] = drain
    raw["runtime"]["batching"] = {"requestTimeoutSeconds": timeout}
    parsed = parse_spec(raw)
    assert router_grace_seconds(parsed) > drain + hold + timeout


@given(name=st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True))
def test_router_pods_and_runtime_pods_are_never_selected_by_each_other(name):
    owner = Owner(name, "ns", "uid")
    parsed = parse_spec(spec(routing={}))
    revision = render_revision(name, parsed)
    engines = [deployment(owner, parsed, revision, track, 1) for track in ("stable", "canary")]
    router = router_deployment(owner, parsed)
    router_pod = router["spec"]["template"]["metadata"]["labels"]
    for engine in engines:
        engine_pod = engine["spec"]["template"]["metadata"]["labels"]
        assert engine_pod[COMPONENT_LABEL] == ENGINE and router_pod[COMPONENT_LABEL] == ROUTER
        assert not matches(engine["spec"]["selector"]["matchLabels"], router_pod)
        assert not matches(router["spec"]["selector"]["matchLabels"], engine_pod)
        assert not matches(service(owner, routed=True)["spec"]["selector"], engine_pod)
        assert matches(service(owner, routed=False)["spec"]["selector"], engine_pod)
    assert matches(service(owner, routed=True)["spec"]["selector"], router_pod)
    # set-based: the scale subresource's selector is parsed into a LabelSelector, which has no "!="
    assert selector_string(name).endswith(f"{COMPONENT_LABEL} notin ({ROUTER})")


def test_the_component_label_leaves_the_revision_alone():
    parsed = parse_spec(spec())
    assert COMPONENT_LABEL not in render_revision(OWNER.name, parsed).template["metadata"]["labels"]
