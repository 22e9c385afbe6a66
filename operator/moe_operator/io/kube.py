"""The Kubernetes API calls the operator makes, with objects as plain dicts.

Every call has a connect and a read timeout and runs over TCP keep-alive connections, so a half-open
connection fails the call instead of holding a worker forever. Bodies are read as raw JSON: the typed client's
per-call validation and model objects cost more CPU than the rest of a reconcile pass.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Mapping
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from moe_operator.decisions.naming import FIELD_MANAGER, GROUP, PLURAL, VERSION
from moe_operator.machinery.errors import NotLeader

REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)

# Every API permission the operator needs, kopf's watches included (scanning disabled, no kopf peering):
# (API group, resource, verbs). The Helm chart derives its RBAC rules from this table.
PERMISSIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (GROUP, PLURAL, ("get", "list", "watch")),
    (GROUP, f"{PLURAL}/status", ("update",)),
    # children carry ownerReferences with blockOwnerDeletion, which needs update on the owner's finalizers
    (GROUP, f"{PLURAL}/finalizers", ("update",)),
    # the stable and the canary Deployment; a finished or rejected canary is deleted
    ("apps", "deployments", ("get", "list", "watch", "create", "patch", "delete")),
    # per-revision runtime settings (immutable, pruned past the history limit) and the adapter list
    ("", "configmaps", ("get", "list", "watch", "create", "patch", "delete")),
    # the Service clients use; with spec.routing also one headless Service per track, deleted without it
    ("", "services", ("get", "list", "watch", "create", "patch", "delete")),
    # spec.routing: the router's own identity (ServiceAccount, Role, RoleBinding) per ModelDeployment
    ("", "serviceaccounts", ("get", "list", "watch", "create", "patch", "delete")),
    ("rbac.authorization.k8s.io", "roles", ("get", "list", "watch", "create", "patch", "delete")),
    ("rbac.authorization.k8s.io", "rolebindings", ("get", "list", "watch", "create", "patch", "delete")),
    # not read by the operator: RBAC lets it grant the routers' Role only what it holds itself
    ("discovery.k8s.io", "endpointslices", ("list", "watch")),
    # read only: readiness and failures (image pulls, scheduling, crash loops) reported in the status
    ("", "pods", ("list", "watch")),
    ("", "events", ("create", "patch")),
    # a budget per track of several pods; deleted when the track no longer needs one
    ("policy", "poddisruptionbudgets", ("get", "list", "watch", "create", "patch", "delete")),
)
# Leader election, in the operator's own namespace only (the chart grants it there with a Role).
LEADER_ELECTION_PERMISSIONS = (("coordination.k8s.io", "leases", ("get", "create", "update")),)

RESOURCES = {  # kind -> (API path prefix, plural)
    "ModelDeployment": (f"/apis/{GROUP}/{VERSION}", PLURAL),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}
API_VERSIONS = {
    "ModelDeployment": f"{GROUP}/{VERSION}",
    "Deployment": "apps/v1",
    "ConfigMap": "v1",
    "Service": "v1",
    "Pod": "v1",
    "Event": "v1",
    "PodDisruptionBudget": "policy/v1",
    "ServiceAccount": "v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
}


def keepalive_socket_options() -> list[tuple[int, int, int]]:
    """TCP keep-alive as client-go dials the API server: probes after 30 s idle, every 15 s, 9 of them."""
    options = [
        *urllib3.connection.HTTPConnection.default_socket_options,
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 9)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


def api_client(connections: int, configuration: client.Configuration | None = None) -> client.ApiClient:
    """A client for the in-cluster service account or the current kubeconfig context (or `configuration`)."""
    if configuration is None:
        configuration = client.Configuration()
        config.load_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = connections
    configuration.socket_options = keepalive_socket_options()
    # a failed connect is retried; a request that was sent and timed out is not (it may have done its work).
    # A read or an idempotent write answered 429 or 503 with Retry-After (a watch cache still starting, as for
    # a CRD just created) is tried again after that delay, as client-go does.
    configuration.retries = urllib3.Retry(
        total=3, connect=3, read=0, redirect=0, status=3, backoff_factor=0.2
    )
    return client.ApiClient(configuration)


def path(kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    prefix, plural = RESOURCES[kind]
    parts = [prefix]
    if namespace:
        parts += ["namespaces", namespace]
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


class Kube:
    def __init__(
        self,
        api: client.ApiClient,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
        may_write: Callable[[], bool] | None = None,
    ) -> None:
        """`api`'s connection pool should allow as many connections as threads that use it. `may_write`: the
        leader election's fence, asked before every write (None: this replica is the only one)."""
        self._api = api
        self._timeout = timeout
        self.may_write = may_write

    def request(
        self,
        method: str,
        url_path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if method != "GET" and self.may_write is not None and not self.may_write():
            raise NotLeader(f"{method} {url_path}: this replica does not lead")
        response = self._api.call_api(
            url_path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
            _request_timeout=self._timeout,
        )  # raises ApiException (with the answer's body) unless the status is 2xx
        return json.loads(response.data) if response.data else {}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", path(kind, namespace, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(
        self, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else {}
        items = self.request("GET", path(kind, namespace), query=query).get("items") or []
        for item in items:  # a list's items carry no kind of their own
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", API_VERSIONS[kind])
        return items

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """POST: fails with 409 AlreadyExists instead of taking over an object someone else made."""
        meta = obj["metadata"]
        return self.request(
            "POST", path(obj["kind"], meta["namespace"]), body=obj, query={"fieldManager": FIELD_MANAGER}
        )

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as the operator's field manager, taking over fields others changed. With
        metadata.resourceVersion set, the API server refuses (409) when the object changed since it was read."""
        meta = obj["metadata"]
        return self.request(
            "PATCH",
            path(obj["kind"], meta["namespace"], meta["name"]),
            body=obj,
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Deletes the object if it is still the one with `uid` (never a namesake created meanwhile)."""
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", path(kind, namespace, name), body=body)
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    def replace_status(self, md: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
        """Replaces the ModelDeployment's whole status (fields left out are gone). `md` is the object as read:
        its resourceVersion makes the API server refuse (409) when someone changed it since."""
        meta = md["metadata"]
        return self.request(
            "PUT",
            path("ModelDeployment", meta["namespace"], meta["name"], "status"),
            body={**md, "status": status},
        )

    def create_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path("Event", event["metadata"]["namespace"]), body=event)

    def patch_event(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self.request(
            "PATCH", path("Event", namespace, name), body=patch, content_type="application/merge-patch+json"
        )
