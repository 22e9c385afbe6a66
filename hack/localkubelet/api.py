"""The few Kubernetes API calls the local kubelet makes, on plain dicts (no client models)."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from localkubelet.podstatus import timestamp

log = logging.getLogger("localkubelet.api")
MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "local-kubelet"


class Api:
    def __init__(self, kubeconfig: Path) -> None:
        self._client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self._client)

    # ---- pods --------------------------------------------------------------------------------------------

    def list_pods(self, node: str) -> tuple[list[dict[str, Any]], str]:
        """The pods bound to `node` and the resourceVersion to watch from."""
        found = _json(
            self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node}", _preload_content=False
            )
        )
        return found["items"], found["metadata"]["resourceVersion"]

    def watch_pods(
        self, node: str, resource_version: str, timeout_s: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        stream = watch.Watch().stream(
            self.core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={node}",
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_s,
        )
        for event in stream:
            yield event["type"], event["raw_object"]

    def patch_pod_status(self, pod: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        metadata = pod["metadata"]
        self.core.patch_namespaced_pod_status(
            metadata["name"], metadata["namespace"], {"status": status},
            _content_type=MERGE_PATCH, _preload_content=False,
        )  # fmt: skip

    def delete_pod(self, pod: Mapping[str, Any]) -> None:
        """The kubelet's final delete: no further grace, and only this very pod (not a namesake)."""
        metadata = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": metadata["uid"]}}
        try:
            self.core.delete_namespaced_pod(
                metadata["name"], metadata["namespace"], body=body, _preload_content=False
            )
        except client.ApiException as err:
            if err.status not in (404, 409):
                raise

    # ---- what containers read ----------------------------------------------------------------------------

    def config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self._get(
            lambda: self.core.read_namespaced_config_map(name, namespace, _preload_content=False)
        )
        return None if found is None else dict(found.get("data") or {})

    def secret(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self._get(lambda: self.core.read_namespaced_secret(name, namespace, _preload_content=False))
        if found is None:
            return None
        data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (found.get("data") or {}).items()}
        return {**data, **(found.get("stringData") or {})}

    def service_account_token(self, namespace: str, name: str, request: Mapping[str, Any]) -> str:
        """A TokenRequest for the ServiceAccount; ApiException (404) when it does not exist."""
        found = _json(
            self.core.create_namespaced_service_account_token(
                name, namespace, request, _preload_content=False
            )
        )
        return found["status"]["token"]

    def server(self) -> tuple[str, str]:
        """The API server's URL and its CA file, for the kubeconfigs handed to pods."""
        configuration = self._client.configuration
        return configuration.host, configuration.ssl_ca_cert

    # ---- nodes -------------------------------------------------------------------------------------------

    def node(self, name: str) -> dict[str, Any] | None:
        return self._get(lambda: self.core.read_node(name, _preload_content=False))

    def patch_node_status(self, name: str, status: Mapping[str, Any]) -> None:
        self.core.patch_node_status(
            name, {"status": status}, _content_type=MERGE_PATCH, _preload_content=False
        )

    def server_version(self) -> str:
        return client.VersionApi(self._client).get_code().git_version

    # ---- helpers -----------------------------------------------------------------------------------------

    @staticmethod
    def _get(call) -> dict[str, Any] | None:
        try:
            return _json(call())
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise


class Events:
    """Pod Events the way the kubelet records them: a repeat of the same reason and message counts up."""

    def __init__(self, api: Api) -> None:
        self._api = api
        self._seen: dict[tuple[str, str, str], tuple[str, int]] = {}

    def emit(self, pod: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        metadata = pod["metadata"]
        namespace, key = metadata["namespace"], (metadata["uid"], reason, message)
        now = timestamp(time.time())
        try:
            if key in self._seen:
                name, count = self._seen[key]
                self._api.core.patch_namespaced_event(
                    name, namespace, {"count": count + 1, "lastTimestamp": now},
                    _content_type=MERGE_PATCH, _preload_content=False,
                )  # fmt: skip
                self._seen[key] = (name, count + 1)
                return
            name = f"{metadata['name']}.{uuid.uuid4().hex[:16]}"
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": namespace},
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": metadata["name"],
                    "namespace": namespace,
                    "uid": metadata["uid"],
                    "fieldPath": f"spec.containers{{{pod['spec']['containers'][0]['name']}}}",
                },
                "reason": reason,
                "message": message,
                "type": kind,
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": COMPONENT, "host": pod["spec"].get("nodeName", "")},
                "reportingComponent": COMPONENT,
                "reportingInstance": pod["spec"].get("nodeName", ""),
            }
            self._api.core.create_namespaced_event(namespace, body, _preload_content=False)
            self._seen[key] = (name, 1)
        except client.ApiException as err:  # Events are best effort, as in the kubelet
            log.warning(
                "could not record event %s for %s/%s: %s", reason, namespace, metadata["name"], err.reason
            )

    def forget(self, uid: str) -> None:
        self._seen = {key: value for key, value in self._seen.items() if key[0] != uid}


def _json(response) -> dict[str, Any]:
    return json.loads(response.data)
