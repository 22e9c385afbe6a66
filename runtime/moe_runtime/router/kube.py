"""List and watch one kind of object through the Kubernetes API: a full list, then its changes, listing again
after a broken watch or a 410 Gone. Runs on a thread of its own; hands plain dicts to its callbacks.

Credentials: the pod's ServiceAccount in a cluster, or the kubeconfig named by KUBECONFIG (the local stack's
kubelet hands its router pods one with a token of their ServiceAccount).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("moe_runtime.router.kube")

WATCH_TIMEOUT_S = 240
REQUEST_TIMEOUT = (5.0, 30.0)
RETRY_S = 1.0


def api_client() -> client.ApiClient:
    configuration = client.Configuration()
    config.load_config(client_configuration=configuration)
    return client.ApiClient(configuration)


class ListWatch:
    """Keeps `on_sync(items)` (after each list) and `on_event(type, obj)` (ADDED, MODIFIED, DELETED) coming
    for the objects at `path` that `query` selects, until `stop()`."""

    def __init__(
        self,
        api: client.ApiClient,
        path: str,
        query: Mapping[str, str],
        on_sync: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        name: str,
    ) -> None:
        self._api, self._path, self._query = api, path, dict(query)
        self._on_sync, self._on_event = on_sync, on_event
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failures = 0  # lists and watches that broke, for the metrics

    def start(self) -> ListWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                listed = self._get(self._query)
                self._on_sync(listed.get("items") or [])
                version = (listed.get("metadata") or {}).get("resourceVersion", "")
                while not self._stopping.is_set():
                    version = self._watch(version)
                    if version is None:
                        break  # 410 Gone: list again
            except Exception as err:  # noqa: BLE001 - any break means: list again, after a pause
                self.failures += 1
                log.warning("%s: list/watch broke (%s); listing again", self._path, err)
                self._stopping.wait(RETRY_S)

    def _get(self, query: Mapping[str, str]) -> dict[str, Any]:
        response = self._call(query, REQUEST_TIMEOUT)
        return json.loads(response.data)

    def _watch(self, version: str) -> str | None:
        """Feeds the events of one watch request; the version to resume from, or None to list again."""
        query = {
            **self._query,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        response = self._call(query, (REQUEST_TIMEOUT[0], WATCH_TIMEOUT_S + 30))
        try:
            for line in iter_resp_lines(response):
                if self._stopping.is_set():
                    return version
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                version = (obj.get("metadata") or {}).get("resourceVersion", version)
                if kind != "BOOKMARK":
                    self._on_event(kind, obj)
        finally:
            response.release_conn()
        return version

    def _call(self, query: Mapping[str, str], timeout):
        return self._api.call_api(
            self._path,
            "GET",
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
            _request_timeout=timeout,
        )
