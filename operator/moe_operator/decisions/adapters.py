"""status.adapters, the AdaptersReady condition and the adapter Events: how many Ready pods have each LoRA adapter
of the spec loaded, and why it failed where it did, from the runtime's own metrics through Prometheus (read every
READ_INTERVAL_S off the reconcile pass while the ModelDeployment has adapters; a pass reports the newest read).
Pure.

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
from moe_operator.decisions.naming import REVISION_LABEL
from moe_operator.decisions.pods import is_ready, is_terminating
from moe_operator.decisions.promdata import PROMETHEUS_UNAVAILABLE, AdapterStates, NoData
from moe_operator.decisions.spec import ModelDeploymentSpec
from moe_operator.decisions.status import Condition
from moe_operator.decisions.statusfields import count, mappings

ADAPTERS_READY = "AdaptersReady"
READ_INTERVAL_S = 10.0


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


@dataclass(frozen=True)
class AdapterRead:
    """The newest read of every pod's adapter states, and when it was taken."""

    at: float
    states: AdapterStates | NoData


def report(
    spec: ModelDeploymentSpec,
    status_before: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    read: AdapterRead | None,
    measuring: bool,
) -> AdapterReport:
    names = [adapter.name for adapter in spec.adapters]
    if not names:
        return AdapterReport()
    previous = mappings(status_before.get("adapters"))
    if read is None and measuring:
        if [i.get("name") for i in previous] == names:
            return AdapterReport({"adapters": previous}, _carried(status_before))
        read = AdapterRead(0, NoData("NoSeries", "the adapters' state has not been read yet"))
    states = (
        read.states if read else NoData(PROMETHEUS_UNAVAILABLE, "the operator runs without --prometheus-url")
    )
    items, verdict = summarize(names, ready_pod_names(pods), states)
    return AdapterReport(
        {"adapters": items}, ((ADAPTERS_READY, verdict),), tuple(adapter_events(previous, items))
    )


def regression(
    read: AdapterRead | None, pods: Iterable[Mapping[str, Any]], candidate: str, baseline: str | None
) -> str | None:
    """An adapter that serves on a pod of the baseline revision and failed to load on a pod of the candidate:
    a deterministic regression of the candidate (say, a lower max LoRA rank), named with the pod and reason."""
    if read is None or isinstance(read.states, NoData) or baseline is None:
        return None
    revision_of = {
        p["metadata"]["name"]: (p["metadata"].get("labels") or {}).get(REVISION_LABEL) for p in pods
    }
    serving = {
        adapter
        for pod, states in read.states.pods.items()
        if revision_of.get(pod) == baseline
        for adapter, state in states.items()
        if state is None
    }
    for pod, states in sorted(read.states.pods.items()):
        if revision_of.get(pod) != candidate:
            continue
        for adapter, state in sorted(states.items()):
            if state and adapter in serving:
                return f"adapter {adapter} failed to load on pod {pod} ({state}) and serves on revision {baseline}"
    return None


def _carried(status: Mapping[str, Any]) -> tuple[tuple[str, Condition], ...]:
    for condition in mappings(status.get("conditions")):
        if condition.get("type") == ADAPTERS_READY:
            verdict = Condition(
                condition.get("status") == "True", condition.get("reason", ""), condition.get("message", "")
            )
            return ((ADAPTERS_READY, verdict),)
    return ()
