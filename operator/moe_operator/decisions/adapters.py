"""status.adapters, the AdaptersReady condition and the adapter Events: how many Ready pods have each LoRA adapter
of the spec loaded, and why it failed where it did, from the runtime's own metrics through Prometheus (one
query per ModelDeployment and evaluation, every EVALUATION_INTERVAL_S while it has adapters; in between, a
pass keeps what the last evaluation found, unless the spec's adapters changed).

The runtime exports, per adapter, `moe_runtime_lora_adapter_loaded` (1 once it loaded and serves, also while
evicted for room) and `moe_runtime_lora_adapter_load_error{reason}` while its last load failed (runtime/metrics.py).
An adapter is ready when it is loaded on every Ready pod. The condition is left out without adapters; a
broken adapter does not make the ModelDeployment Degraded (the base model and the other adapters serve), it
makes AdaptersReady False with reason AdapterLoadFailed, and a Warning Event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moe_operator.decisions.events import Event
from moe_operator.decisions.pods import is_ready, is_terminating
from moe_operator.decisions.promdata import PROMETHEUS_UNAVAILABLE, AdapterStates, NoData
from moe_operator.decisions.spec import ModelDeploymentSpec
from moe_operator.decisions.status import Condition
from moe_operator.decisions.statusfields import count, mappings

ADAPTERS_READY = "AdaptersReady"
EVALUATION_INTERVAL_S = 10.0


@dataclass(frozen=True)
class AdapterReport:
    status: Mapping[str, Any] = field(default_factory=dict)  # merged into the ModelDeployment's status
    conditions: tuple[tuple[str, Condition], ...] = ()
    events: tuple[Event, ...] = ()
    next_due: float | None = None


def summarize(
    names: Sequence[str], ready_pods: Sequence[str], states: AdapterStates | NoData
) -> tuple[list[dict[str, Any]], Condition]:
    """status.adapters and the AdaptersReady verdict. Pure."""
    ready = sorted(ready_pods)
    if isinstance(states, NoData):
        items = [{"name": name, "readyReplicas": len(ready)} for name in names]
        return items, Condition(False, states.reason, f"cannot read the adapters' state: {states.message}")
    items = []
    for name in names:
        of_pods = {pod: states.pods.get(pod, {}).get(name, "") for pod in ready}
        item: dict[str, Any] = {
            "name": name,
            "loadedReplicas": sum(state is None for state in of_pods.values()),
            "readyReplicas": len(ready),
        }
        failed = {pod: state for pod, state in of_pods.items() if state}
        if failed:
            by_reason: dict[str, list[str]] = {}
            for pod, reason in failed.items():
                by_reason.setdefault(reason, []).append(pod)
            item["failedReplicas"] = len(failed)
            item["reason"] = Counter(failed.values()).most_common(1)[0][0]
            item["error"] = "failed to load: " + "; ".join(
                f"{reason} on {', '.join(pods)}" for reason, pods in sorted(by_reason.items())
            )
        items.append(item)
    return items, _verdict(items, len(ready))


def _verdict(items: list[dict[str, Any]], ready: int) -> Condition:
    if ready == 0:
        return Condition(False, "NoReadyPods", "no Ready pod serves the adapters yet")
    failed = [item for item in items if item.get("failedReplicas")]
    if failed:
        return Condition(False, "AdapterLoadFailed", "; ".join(f"{i['name']} {i['error']}" for i in failed))
    loading = [item for item in items if item["loadedReplicas"] < ready]
    if loading:
        counts = ", ".join(f"{i['name']} on {i['loadedReplicas']}/{ready}" for i in loading)
        return Condition(False, "AdaptersLoading", f"not loaded on every Ready pod yet: {counts}")
    return Condition(True, "AllAdaptersLoaded", f"{len(items)} adapter(s) loaded on all {ready} Ready pods")


def adapter_events(previous: Iterable[Mapping[str, Any]], items: Iterable[Mapping[str, Any]]) -> list[Event]:
    """A Normal AdapterLoaded when an adapter comes to be loaded on every Ready pod, a Warning AdapterLoadFailed
    when a failure appears or changes. Pure."""
    before = {item.get("name"): item for item in previous}
    events = []
    for item in items:
        was = before.get(item["name"], {})
        ready, loaded = item.get("readyReplicas", 0), item.get("loadedReplicas")
        if item.get("error") and item["error"] != was.get("error"):
            events.append(Event("Warning", "AdapterLoadFailed", f"adapter {item['name']} {item['error']}"))
        was_loaded, was_ready = count(was.get("loadedReplicas")), count(was.get("readyReplicas"))
        was_all_loaded = was_loaded is not None and bool(was_ready) and was_loaded == was_ready
        if loaded is not None and ready > 0 and loaded == ready and not was_all_loaded:
            events.append(
                Event(
                    "Normal", "AdapterLoaded", f"adapter {item['name']} is loaded on all {ready} Ready pods"
                )
            )
    return events


def ready_pod_names(pods: Iterable[Mapping[str, Any]]) -> list[str]:
    return [p["metadata"]["name"] for p in pods if is_ready(p) and not is_terminating(p)]


class AdapterReader:
    def __init__(self, prometheus=None, interval_s: float = EVALUATION_INTERVAL_S) -> None:
        self._prometheus = prometheus
        self._interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}  # when each ModelDeployment was last evaluated

    def report(
        self,
        md: Mapping[str, Any],
        spec: ModelDeploymentSpec,
        pods: Iterable[Mapping[str, Any]],
        now: float,
    ) -> AdapterReport:
        meta = md["metadata"]
        key = (meta["namespace"], meta["name"])
        names = [adapter.name for adapter in spec.adapters]
        if not names:
            self._last.pop(key, None)
            return AdapterReport()
        status_before = md.get("status") or {}
        previous = mappings(status_before.get("adapters"))
        last = self._last.get(key)
        if last is not None and now < last + self._interval_s and [i.get("name") for i in previous] == names:
            return AdapterReport({"adapters": previous}, _carried(status_before), (), last + self._interval_s)
        states = (
            self._prometheus.adapter_states(meta["namespace"], meta["name"], now)
            if self._prometheus is not None
            else NoData(PROMETHEUS_UNAVAILABLE, "the operator runs without --prometheus-url")
        )
        items, verdict = summarize(names, ready_pod_names(pods), states)
        self._last[key] = now
        return AdapterReport(
            {"adapters": items},
            ((ADAPTERS_READY, verdict),),
            tuple(adapter_events(previous, items)),
            now + self._interval_s,
        )


def _carried(status: Mapping[str, Any]) -> tuple[tuple[str, Condition], ...]:
    for condition in mappings(status.get("conditions")):
        if condition.get("type") == ADAPTERS_READY:
            verdict = Condition(
                condition.get("status") == "True", condition.get("reason", ""), condition.get("message", "")
            )
            return ((ADAPTERS_READY, verdict),)
    return ()
