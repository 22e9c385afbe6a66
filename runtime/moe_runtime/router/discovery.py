"""What the router knows of the cluster: the EndpointSlices of its engine Services (one per track) and its
ModelDeployment's status, each kept by a list-and-watch on a thread of its own. `on_change` is called (from
those threads) after every change."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from moe_runtime.router.endpoints import SERVICE_NAME_LABEL, Endpoint, merge
from moe_runtime.router.kube import ListWatch

MODEL_DEPLOYMENTS = "/apis/moedeploy.dev/v1alpha1/namespaces/{namespace}/modeldeployments"
ENDPOINT_SLICES = "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"


class Discovery:
    def __init__(
        self,
        api,
        namespace: str,
        model_deployment: str,
        tracks: Mapping[str, str],  # engine Service name -> track
        on_change: Callable[[], None],
    ) -> None:
        self._lock = threading.Lock()
        self._tracks = dict(tracks)
        self._slices: dict[str, tuple[Mapping[str, Any], str]] = {}
        self._status: Mapping[str, Any] | None = None
        self._on_change = on_change
        self.slices_synced = threading.Event()
        self.status_synced = threading.Event()
        selector = f"{SERVICE_NAME_LABEL} in ({','.join(sorted(self._tracks))})"
        self._watches = [
            ListWatch(
                api,
                ENDPOINT_SLICES.format(namespace=namespace),
                {"labelSelector": selector},
                self._slices_listed,
                self._slice_event,
                name="watch-endpointslices",
            ),
            ListWatch(
                api,
                MODEL_DEPLOYMENTS.format(namespace=namespace),
                {"fieldSelector": f"metadata.name={model_deployment}"},
                self._status_listed,
                self._status_event,
                name="watch-modeldeployment",
            ),
        ]

    def start(self) -> Discovery:
        for watch in self._watches:
            watch.start()
        return self

    def stop(self) -> None:
        for watch in self._watches:
            watch.stop()

    @property
    def watch_failures(self) -> int:
        return sum(w.failures for w in self._watches)

    def endpoints(self) -> dict[str, Endpoint]:
        with self._lock:
            return merge(self._slices.values())

    def status(self) -> Mapping[str, Any] | None:
        """The ModelDeployment's status; None before it was read (or while it cannot be)."""
        with self._lock:
            return self._status

    def _track_of(self, endpoint_slice: Mapping[str, Any]) -> str | None:
        return self._tracks.get(
            ((endpoint_slice.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        )

    def _slices_listed(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._slices = {}
            for item in items:
                track = self._track_of(item)
                if track is not None:
                    self._slices[item["metadata"]["name"]] = (item, track)
        self.slices_synced.set()
        self._on_change()

    def _slice_event(self, kind: str, item: dict[str, Any]) -> None:
        name, track = item["metadata"]["name"], self._track_of(item)
        with self._lock:
            if kind == "DELETED" or track is None:
                self._slices.pop(name, None)
            else:
                self._slices[name] = (item, track)
        self._on_change()

    def _status_listed(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._status = (items[0].get("status") or {}) if items else {}
        self.status_synced.set()
        self._on_change()

    def _status_event(self, kind: str, item: dict[str, Any]) -> None:
        with self._lock:
            self._status = {} if kind == "DELETED" else (item.get("status") or {})
        self._on_change()
