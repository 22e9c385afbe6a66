from moe_runtime.router.endpoints import Endpoint, merge, ready, slice_endpoints


def endpoint_slice(*entries, ports=({"name": "http", "port": 8000},)):
    return {"addressType": "IPv4", "ports": list(ports), "endpoints": list(entries)}


def entry(ip, pod, **conditions):
    return {"addresses": [ip], "conditions": conditions, "targetRef": {"kind": "Pod", "name": pod}}


def test_ready_means_ready_or_unknown_and_not_terminating():
    found = slice_endpoints(
        endpoint_slice(
            entry("10.0.0.1", "a", ready=True, serving=True, terminating=False),
            entry("10.0.0.2", "b"),  # unknown: counts as ready, as the API advises
            entry("10.0.0.3", "c", ready=False, serving=True, terminating=True),
            entry("10.0.0.4", "d", ready=False),
        ),
        "stable",
    )
    assert [(e.address, e.pod, e.ready) for e in found] == [
        ("10.0.0.1:8000", "a", True),
        ("10.0.0.2:8000", "b", True),
        ("10.0.0.3:8000", "c", False),
        ("10.0.0.4:8000", "d", False),
    ]


def test_the_http_port_is_used_or_the_only_one():
    two = ({"name": "metrics", "port": 9000}, {"name": "http", "port": 8000})
    assert (
        slice_endpoints(endpoint_slice(entry("10.0.0.1", "a"), ports=two), "s")[0].address == "10.0.0.1:8000"
    )
    one = ({"name": "web", "port": 80},)
    assert slice_endpoints(endpoint_slice(entry("10.0.0.1", "a"), ports=one), "s")[0].address == "10.0.0.1:80"
    unnamed = ({"name": "a", "port": 1}, {"name": "b", "port": 2})
    assert slice_endpoints(endpoint_slice(entry("10.0.0.1", "a"), ports=unnamed), "s") == []
    assert slice_endpoints({"endpoints": None, "ports": None}, "s") == []


def test_ipv6_addresses_are_bracketed():
    found = slice_endpoints(endpoint_slice(entry("fd00::1", "a")), "s")
    assert found[0].address == "[fd00::1]:8000"


def test_an_endpoint_in_two_slices_is_ready_when_either_says_so_and_tracks_come_with_the_slice():
    moving_out = endpoint_slice(entry("10.0.0.1", "a", ready=False))
    moving_in = endpoint_slice(entry("10.0.0.1", "a", ready=True), entry("10.0.0.9", "z", ready=True))
    canary = endpoint_slice(entry("10.0.0.5", "c", ready=True))
    merged = merge([(moving_out, "stable"), (moving_in, "stable"), (canary, "canary")])
    assert ready(merged) == [
        Endpoint("10.0.0.1:8000", "a", "stable", True),
        Endpoint("10.0.0.5:8000", "c", "canary", True),
        Endpoint("10.0.0.9:8000", "z", "stable", True),
    ]
