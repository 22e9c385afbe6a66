"""A pod's API credentials, as the kubelet's projected service-account token volume gives them. Pure.

A real kubelet mounts a token of the pod's ServiceAccount (TokenRequest, bound to the pod) at
/var/run/secrets/kubernetes.io/serviceaccount, where in-cluster clients look. A local process cannot have that
path, so the local kubelet writes a kubeconfig with the same token instead and points KUBECONFIG at it: the
Kubernetes clients read it first, and the pod reaches the API as its own ServiceAccount, under its own RBAC.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TOKEN_SECONDS = 24 * 3600  # a local session's length; a real kubelet requests an hour and rotates


def mounts_token(pod: Mapping[str, Any]) -> bool:
    """A pod that names its ServiceAccount and does not opt out (automountServiceAccountToken unset means true;
    the ServiceAccount's own setting is not read). The local API server runs without the ServiceAccount
    admission plugin, which would name `default` for a pod that names none: such a pod has no account a token
    can be bound to (TokenRequest refuses one for a pod of another account), so it gets none."""
    return pod["spec"].get("automountServiceAccountToken") is not False and bool(service_account(pod))


def service_account(pod: Mapping[str, Any]) -> str:
    return pod["spec"].get("serviceAccountName") or pod["spec"].get("serviceAccount") or ""


def token_request(pod: Mapping[str, Any]) -> dict[str, Any]:
    metadata = pod["metadata"]
    bound = {"kind": "Pod", "apiVersion": "v1", "name": metadata["name"], "uid": metadata["uid"]}
    return {"spec": {"expirationSeconds": TOKEN_SECONDS, "boundObjectRef": bound}}


def token_kubeconfig(server: str, ca_file: str, token: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": "pod", "user": {"token": token}}],
        "contexts": [{"name": "pod", "context": {"cluster": "local", "user": "pod", "namespace": namespace}}],
        "current-context": "pod",
    }
