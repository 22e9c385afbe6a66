"""The Kubernetes API calls the reconciler makes, with objects as plain dicts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from moe_operator.naming import FIELD_MANAGER, GROUP, PLURAL, VERSION

# Every API permission the operator needs, kopf's own calls included (with peering off and scanning
# disabled): (API group, resource, verbs). The Helm chart derives its RBAC rules from this table.
PERMISSIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # kopf lists and watches them, and keeps its progress in their annotations
    (GROUP, PLURAL, ("get", "list", "watch", "patch")),
    (GROUP, f"{PLURAL}/status", ("patch",)),
    # children carry ownerReferences with blockOwnerDeletion, which needs update on the owner's finalizers
    (GROUP, f"{PLURAL}/finalizers", ("update",)),
    # watched for drift and progress; written by server-side apply (a patch that creates when absent)
    ("apps", "deployments", ("get", "list", "watch", "create", "patch")),
    # read to compare (cheaper for the API server than a no-op apply), applied when they differ
    ("", "services", ("get", "create", "patch")),
    ("", "configmaps", ("get", "create", "patch")),
    ("", "events", ("create",)),
)

CONFLICT_RETRIES = 5

T = TypeVar("T")


def retry_on_conflict(call: Callable[[], T], attempts: int = CONFLICT_RETRIES) -> T:
    """Run `call`, again after a short pause when the API server answers 409 Conflict."""
    for attempt in range(attempts):
        try:
            return call()
        except ApiException as err:
            if err.status != 409 or attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def not_found_is_none(call: Callable[[], T]) -> T | None:
    try:
        return call()
    except ApiException as err:
        if err.status == 404:
            return None
        raise


class Kube:
    def __init__(self, api_client: client.ApiClient) -> None:
        """`api_client`'s connection pool should allow as many connections as threads that use it."""
        self._apps = client.AppsV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._as_dict = api_client.sanitize_for_serialization

    def get_model_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return not_found_is_none(
            lambda: self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        )

    def list_model_deployments(self, namespace: str | None) -> list[tuple[str, str]]:
        """(namespace, name) of every ModelDeployment in `namespace`, or in all namespaces for None."""
        if namespace is None:
            found = self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            found = self._custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return [(md["metadata"]["namespace"], md["metadata"]["name"]) for md in found["items"]]

    def patch_model_deployment_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """A merge patch: status fields other parts of the operator own stay as they are."""
        not_found_is_none(
            lambda: self._custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
                _content_type="application/merge-patch+json",
            )
        )

    def read(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """The object in the cluster with the kind, namespace and name of `obj`, if there is one."""
        read = {
            "ConfigMap": self._core.read_namespaced_config_map,
            "Service": self._core.read_namespaced_service,
            "Deployment": self._apps.read_namespaced_deployment,
        }[obj["kind"]]
        found = not_found_is_none(lambda: read(obj["metadata"]["name"], obj["metadata"]["namespace"]))
        return None if found is None else self._as_dict(found)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as the operator's field manager, taking over fields others changed."""
        patch = {
            "ConfigMap": self._core.patch_namespaced_config_map,
            "Service": self._core.patch_namespaced_service,
            "Deployment": self._apps.patch_namespaced_deployment,
        }[obj["kind"]]
        applied = retry_on_conflict(
            lambda: patch(
                obj["metadata"]["name"],
                obj["metadata"]["namespace"],
                obj,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        )
        return self._as_dict(applied)
