"""The local kubelet's stand-ins for a pod network and service-account tokens (hack/localkubelet/targets.py,
serviceaccount.py)."""

from __future__ import annotations

from localkubelet.serviceaccount import mounts_token, service_account, token_kubeconfig, token_request
from localkubelet.targets import pod_addresses


def pod(**spec):
    containers = spec.pop("containers", [{"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}])
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": {"containers": containers, **spec},
    }


def test_each_declared_port_of_a_running_pod_maps_to_its_containers_local_port():
    assert pod_addresses([("10.245.0.3", {8000: 41000}), ("10.245.0.4", {8000: 42000, 9100: 42001})]) == {
        "10.245.0.3:8000": "127.0.0.1:41000",
        "10.245.0.4:8000": "127.0.0.1:42000",
        "10.245.0.4:9100": "127.0.0.1:42001",
    }
    assert pod_addresses([("10.245.0.5", {})]) == {}


def test_a_token_is_handed_over_unless_the_pod_opts_out():
    assert mounts_token(pod()) and mounts_token(pod(automountServiceAccountToken=True))
    assert not mounts_token(pod(automountServiceAccountToken=False))
    assert service_account(pod()) == "default" and service_account(pod(serviceAccountName="r")) == "r"
    bound = token_request(pod())["spec"]["boundObjectRef"]
    assert bound == {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u1"}
    config = token_kubeconfig("https://127.0.0.1:6443", "/ca.crt", "t0ken", "ns")
    assert config["users"][0]["user"] == {"token": "t0ken"}
    assert config["contexts"][0]["context"]["namespace"] == "ns"
