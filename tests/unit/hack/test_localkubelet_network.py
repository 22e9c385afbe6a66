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


def test_a_token_is_handed_to_a_pod_that_names_its_account_unless_it_opts_out():
    assert mounts_token(pod(serviceAccountName="r")) and mounts_token(pod(serviceAccount="r"))
    assert mounts_token(pod(serviceAccountName="r", automountServiceAccountToken=True))
    assert not mounts_token(pod(serviceAccountName="r", automountServiceAccountToken=False))
    assert not mounts_token(pod()), "no admission names `default`: no account to bind a token to"
    assert service_account(pod(serviceAccountName="r")) == "r"
    bound = token_request(pod())["spec"]["boundObjectRef"]
    assert bound == {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u1"}
    config = token_kubeconfig("https://127.0.0.1:6443", "/ca.crt", "t0ken", "ns")
    assert config["users"][0]["user"] == {"token": "t0ken"}
    assert config["contexts"][0]["context"]["namespace"] == "ns"
