"""The measurement loop: takes each ModelDeployment's Prometheus reads as they fall due (decisions/measurements.py),
in threads of its own, and wakes the ModelDeployment's reconcile pass when a read is in.

A reconcile pass never waits on Prometheus: a slow or hung one delays measurements, never a pass, so the
scaling and rollbacks of other ModelDeployments go on. At most one read of a kind is in flight per
ModelDeployment, so a query that hangs on one of them holds up only its own next read of that kind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from moe_operator.decisions.adapters import AdapterRead
from moe_operator.decisions.engine_metrics import engine_metrics
from moe_operator.decisions.measurements import (
    AdapterStatesRead,
    LastReads,
    QueueDepthRead,
    Read,
    RouterDemandRead,
    WindowRead,
    due_reads,
)
from moe_operator.decisions.promdata import NO_SERIES, Measurement, NoData
from moe_operator.decisions.scaling import QueueRead, RouterRead
from moe_operator.decisions.spec import InvalidSpec, ModelDeploymentSpec, parse_spec
from moe_operator.measure.store import Key, Measurements

log = logging.getLogger(__name__)

TICK_S = 0.5


class Measurer:
    def __init__(
        self,
        prometheus,
        models: Callable[[], list[dict[str, Any]]],
        store: Measurements,
        wake: Callable[[Key], None],
        workers: int = 4,
        clock: Callable[[], float] = time.time,
        tick_s: float = TICK_S,
    ) -> None:
        """`models`: the ModelDeployments as the watch cache holds them now, only read (each tick; the spec of one
        is parsed again only when it is another object); `wake`: queue one for a pass."""
        self._prometheus = prometheus
        self._models = models
        self._store = store
        self._wake = wake
        self._clock = clock
        self._tick_s = tick_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="measure")
        self._lock = threading.Lock()
        self._in_flight: set[tuple[Key, Any]] = set()
        self._last: dict[Key, LastReads] = {}
        # per ModelDeployment, the spec object last parsed and what it gave
        self._specs: dict[Key, tuple[Any, ModelDeploymentSpec | None]] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="measure-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stopped.wait(self._tick_s):
            try:
                self.tick()
            except Exception:  # a bug here must not stop measuring for everyone
                log.exception("measurement loop")

    def tick(self) -> None:
        """Starts every read that is due and not in flight."""
        now = self._clock()
        present = set()
        for md in self._models():
            meta = md["metadata"]
            key = (meta["namespace"], meta["name"])
            present.add(key)
            spec = self._parsed(key, md.get("spec") or {})
            if spec is None:
                continue
            reads = due_reads(
                spec, md.get("status") or {}, now, self._last.get(key, LastReads()), self._store.measured(key)
            )
            for read in reads:
                self._submit(key, read, now)
        for gone in (set(self._last) | set(self._specs)) - present:
            self._last.pop(gone, None)
            self._specs.pop(gone, None)
            self._store.forget(gone)

    def _parsed(self, key: Key, raw: dict[str, Any]) -> ModelDeploymentSpec | None:
        """parse_spec(raw), None when invalid; kept while the cache holds the same spec object (it replaces an
        object that changed, never edits one)."""
        known = self._specs.get(key)
        if known is not None and known[0] is raw:
            return known[1]
        try:
            spec: ModelDeploymentSpec | None = parse_spec(raw)
        except InvalidSpec:
            spec = None
        self._specs[key] = (raw, spec)
        return spec

    def _submit(self, key: Key, read: Read, now: float) -> None:
        slot = (key, read.key if isinstance(read, WindowRead) else type(read))
        with self._lock:
            if slot in self._in_flight:
                return
            self._in_flight.add(slot)
        last = self._last.get(key, LastReads())
        if isinstance(read, QueueDepthRead):
            self._last[key] = replace(last, queue_depth=now)
        elif isinstance(read, AdapterStatesRead):
            self._last[key] = replace(last, adapter_states=now)
        elif isinstance(read, RouterDemandRead):
            self._last[key] = replace(last, router_demand=now)
        self._pool.submit(self._take, key, read, slot)

    def _take(self, key: Key, read: Read, slot) -> None:
        try:
            namespace, name = key
            if isinstance(read, QueueDepthRead):
                at = self._clock()
                samples = self._prometheus.queue_depth(
                    namespace, name, read.window_s, read.template, at, engine_metrics(read.engine)
                )
                self._store.put_queue(key, QueueRead(at, samples))
            elif isinstance(read, AdapterStatesRead):
                at = self._clock()
                self._store.put_adapters(
                    key, AdapterRead(at, self._prometheus.adapter_states(namespace, name, at))
                )
            elif isinstance(read, RouterDemandRead):
                at = self._clock()
                self._store.put_routers(
                    key, RouterRead(at, self._prometheus.router_demand(namespace, name, at))
                )
            else:
                self._store.put_window(
                    key, read.candidate, read.index, measure_window(self._prometheus, key, read)
                )
            self._wake(key)
        except Exception:
            log.exception("%s/%s: reading %s", *key, type(read).__name__)
        finally:
            with self._lock:
                self._in_flight.discard(slot)


def measure_window(prometheus, key: Key, read: WindowRead) -> Measurement | NoData:
    """Both tracks over the window and over the analysis so far; while baking, the predecessor over the span
    it served during the canary."""
    namespace, name = key
    metrics = engine_metrics(read.engine)
    live = [read.candidate] + ([read.baseline] if read.baseline and read.recorded is None else [])
    window = prometheus.tracks(namespace, name, live, read.end, read.interval_s, metrics, read.overrides)
    if isinstance(window, NoData):
        return window
    if read.candidate not in window:
        return NoData(NO_SERIES, f"no pod of revision {read.candidate} was scraped in window {read.index}")
    total = prometheus.tracks(
        namespace, name, live, read.end, read.end - read.started_at, metrics, read.overrides
    )
    if isinstance(total, NoData):
        return total
    baseline, baseline_total = None, None
    if read.recorded is not None and read.baseline:
        start, end = read.recorded
        recorded = prometheus.tracks(namespace, name, [read.baseline], end, max(end - start, 1.0), metrics)
        if isinstance(recorded, NoData):
            return recorded
        baseline_total = recorded.get(read.baseline)
    elif read.baseline:
        baseline, baseline_total = window.get(read.baseline), total.get(read.baseline)
    return Measurement(
        at=read.end,
        candidate=window[read.candidate],
        candidate_total=total.get(read.candidate, window[read.candidate]),
        baseline=baseline,
        baseline_total=baseline_total,
    )
