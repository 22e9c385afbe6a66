"""Serves the configured LoRA adapters on the engine: `--lora-modules` (fixed) and the `--lora-list` file
(changed while running), at most `--max-loras` of them in memory (adapters/residency.py decides).

Threads: each load runs on a thread of its own (the pure `lora.load_adapter`: reading and checking files takes
seconds and must not stall the decode steps); everything that touches the engine's adapter table happens in
`step`, on the engine thread, with the worker's lock held, as do `check`, `models` and `count_request` (called by
the worker from the event loop). The list watcher and the loads hand their news over through a queue and wake
the engine thread.

One adapter cannot hold up the others or the pod: loads run side by side, a load that runs past
`load_timeout_s` (a dead volume, a huge file) counts as a failed try (so /ready, which waits for one try of each
adapter, comes within that time) and its answer, should it still come, is dropped; the adapter is tried again
only once that hung load has ended. An error about one adapter on the engine thread fails that adapter alone.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from moe_runtime.adapters.reasons import adapter_error_reason
from moe_runtime.adapters.residency import Demand, Residency, Status
from moe_runtime.adapters.sources import AdapterSource
from moe_runtime.metrics import LoraMetrics
from moe_runtime.model import lora
from moe_runtime.model.lora import AdapterError, AdapterNotFound

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class AdapterStep:
    admissible: frozenset[str] = frozenset()  # adapters whose waiting requests may start this step
    unservable: list = field(
        default_factory=list
    )  # waiting requests that must fail: their adapter cannot load


class LoraManager:
    def __init__(
        self,
        engine,
        metrics: LoraMetrics,
        *,
        base_model: str,
        max_loras: int,
        fixed: Iterable[AdapterSource] = (),
        watched: bool = False,
        load: Callable[..., lora.Adapter] = lora.load_adapter,
        load_timeout_s: float = LOAD_TIMEOUT_S,
    ) -> None:
        self._engine, self._metrics = engine, metrics
        self._base_model = base_model
        self._load = load
        self._load_timeout_s = load_timeout_s
        self._tokens = itertools.count()
        self._loading: dict[str, tuple[int, float]] = {}  # name -> (token, started) of the load that counts
        self._hung: dict[str, threading.Thread] = {}  # loads past their timeout that have not ended yet
        self._threads: dict[str, threading.Thread] = {}  # each adapter's latest load
        self.wake: Callable[[], None] = lambda: None  # the worker sets it: wakes its idle engine thread
        self._residency = Residency(max_loras)
        self._fixed = {source.name: source.path for source in fixed}
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.enabled = bool(self._fixed) or watched
        self.ready = threading.Event()  # every adapter configured at startup was tried once
        metrics.enabled, metrics.max_loras = self.enabled, max_loras
        for name in [name for name in self._fixed if name == base_model]:
            log.error("--lora-modules %s: the name is the base model's; ignored", name)
            del self._fixed[name]
        self._residency.configure(self._fixed)
        if not self.enabled:
            self.ready.set()

    # ---- from other threads ----------------------------------------------------------------------------

    def set_listed(self, sources: list[AdapterSource]) -> None:
        """The adapters of the watched list, as it reads now (any thread)."""
        self._inbox.put(("listed", sources))
        self.wake()

    def close(self) -> None:
        """Loads still running are daemon threads: their answers are never taken."""
        self._loading.clear()

    # ---- with the worker's lock held ---------------------------------------------------------------------

    def check(self, name: str) -> None:
        """AdapterError (AdapterNotFound when unknown) unless new requests may ask for `name`."""
        entry = self._residency.entries.get(name)
        if entry is None or entry.removed:
            raise AdapterNotFound(name)
        if not entry.servable:
            raise AdapterError(name, f"failed to load ({entry.error}); retrying")

    def models(self) -> list[tuple[str, str]]:
        """(name, path) of the adapters that loaded and serve."""
        return [(e.name, e.path) for e in self._residency.entries.values() if e.loaded and not e.removed]

    def count_request(self, name: str) -> None:
        self._metrics.count(name, requests=1)

    def step(self, scheduler, now: float) -> AdapterStep:
        """On the engine thread, before the scheduler's step."""
        self._take_news(now)
        self._give_up_overdue_loads(now)
        if not self.enabled:
            return AdapterStep()
        if not self._residency.entries:  # no request can name an adapter: nothing to look at
            self._metrics.publish({}, 0, (), (), time.time())
            self._mark_ready()
            return AdapterStep()
        demand = _demand(scheduler)
        plan = self._residency.plan(demand, now)
        for name in plan.unload:
            self._isolated(name, now, lambda name=name: self._engine.unload_adapter(name))
        evicted = [
            n for n in plan.unload if (e := self._residency.entries.get(n)) and e.status is Status.EVICTED
        ]
        if evicted:
            self._metrics.evicted(len(evicted))
            log.info("evicted LoRA adapter(s) %s to make room (--max-loras)", ", ".join(evicted))
        for name in plan.unload:
            if name not in self._residency.entries:
                log.info("unloaded LoRA adapter %r: removed, and its last request finished", name)
            elif self._residency.entries[name].status is Status.PENDING:
                log.info("unloaded LoRA adapter %r to load it from its new path", name)
        for name, path in plan.load:
            self._start_load(name, path, now)
        self._publish(demand)
        if not self.ready.is_set() and self._residency.all_tried:
            self._mark_ready()
        doomed = [r for r in scheduler.waiting if r.adapter in plan.unservable] if plan.unservable else []
        return AdapterStep(plan.admissible, doomed)

    def after_step(self, work, sampled: list[int | None], now: float) -> None:
        """Counts each adapter's tokens of a step that ran (before the scheduler records it); its adapters
        count as used."""
        used = set()
        for item, token in zip(work, sampled, strict=True):
            name = item.seq.adapter
            if name is None:
                continue
            used.add(name)
            prompt = len(item.tokens) if item.seq.is_prefilling else 0
            generated = token is not None and token not in item.seq.stop_token_ids
            self._metrics.count(name, prompt_tokens=prompt, generation_tokens=int(generated))
        self._residency.used(used, now)

    # ---- inside ------------------------------------------------------------------------------------------

    def _take_news(self, now: float) -> None:
        while True:
            try:
                news = self._inbox.get_nowait()
            except queue.Empty:
                return
            if news[0] == "listed":
                self._configure(news[1])
            elif news[0] == "loaded":
                _, name, token, adapter = news
                if not self._counts(name, token):
                    continue  # given up on (timed out) or not wanted any more: dropped
                if self._isolated(name, now, lambda adapter=adapter: self._engine.add_adapter(adapter)):
                    self._residency.loaded(name, now)
                    log.info(
                        "loaded LoRA adapter %r from %s (rank %d, %.1f MiB)",
                        name, adapter.path, adapter.rank, adapter.nbytes / 2**20,
                    )  # fmt: skip
            else:
                _, name, token, path, message, reason = news
                if self._counts(name, token):
                    self._failed(name, path, message, reason, now)

    def _counts(self, name: str, token: int) -> bool:
        """Whether a load's answer is the one the adapter waits for (and so it is no longer loading)."""
        if self._loading.get(name, (None,))[0] != token or name not in self._residency.entries:
            return False
        del self._loading[name]
        return True

    def _failed(self, name: str, path: str, message: str, reason: str, now: float) -> None:
        self._residency.failed(name, message, reason, now)
        self._metrics.load_failed(name, reason)
        entry = self._residency.entries[name]
        retry = f"; retrying in {entry.retry_at - now:.0f}s" if entry.status is Status.FAILED else ""
        log.error("LoRA adapter %r from %s failed to load (%s): %s%s", name, path, reason, message, retry)

    def _isolated(self, name: str, now: float, action: Callable[[], object]) -> bool:
        """An engine-table change for one adapter: an error fails that adapter, not the engine loop."""
        try:
            action()
        except Exception as err:
            log.exception("LoRA adapter %r: the engine refused a change to it", name)
            if (entry := self._residency.entries.get(name)) is not None and not entry.removed:
                message = err.reason if isinstance(err, AdapterError) else f"{type(err).__name__}: {err}"
                self._failed(name, entry.path, message, adapter_error_reason(message), now)
            return False
        return True

    def _start_load(self, name: str, path: str, now: float) -> None:
        hung = self._hung.get(name)
        if hung is not None and hung.is_alive():  # one thread per adapter at most, however long it hangs
            self._failed(name, path, "its previous load has not ended yet", "timeout", now)
            return
        self._hung.pop(name, None)
        token = next(self._tokens)
        self._loading[name] = (token, now)
        thread = threading.Thread(
            target=self._load_off_thread, args=(name, path, token), name=f"lora-load-{name}", daemon=True
        )
        thread.start()
        self._threads[name] = thread

    def _give_up_overdue_loads(self, now: float) -> None:
        for name, (token, started) in list(self._loading.items()):
            if now - started > self._load_timeout_s and self._counts(name, token):
                self._hung[name] = self._threads[name]
                path = self._residency.entries[name].path
                message = f"loading took longer than {self._load_timeout_s:g} s (--lora-load-timeout)"
                self._failed(name, path, message, "timeout", now)

    def _configure(self, listed: list[AdapterSource]) -> None:
        wanted = {}
        for source in listed:
            if source.name == self._base_model:
                log.error("--lora-list: adapter %r has the base model's name; ignored", source.name)
            elif source.name in self._fixed and self._fixed[source.name] != source.path:
                log.error("--lora-list: adapter %r is a --lora-modules adapter already; ignored", source.name)
            else:
                wanted[source.name] = source.path
        before = {name: e.path for name, e in self._residency.entries.items() if not e.removed}
        wanted.update(self._fixed)
        if wanted != before:
            added = sorted(set(wanted) - set(before))
            removed = sorted(set(before) - set(wanted))
            changed = sorted(n for n in set(wanted) & set(before) if wanted[n] != before[n])
            log.info("LoRA adapters: added %s, removed %s, path changed %s", added, removed, changed)
        self._residency.configure(wanted)

    def _load_off_thread(self, name: str, path: str, token: int) -> None:
        engine = self._engine
        try:
            adapter = self._load(
                name,
                path,
                engine.config,
                dtype=engine.dtype,
                device=engine.device,
                max_rank=engine.max_lora_rank,
            )
        except AdapterError as err:
            self._inbox.put(("failed", name, token, path, err.reason, adapter_error_reason(err.reason)))
        except torch.OutOfMemoryError as err:
            self._inbox.put(("failed", name, token, path, f"out of memory: {err}", "out_of_memory"))
        except Exception as err:
            log.exception("LoRA adapter %r: unexpected error while loading", name)
            self._inbox.put(("failed", name, token, path, f"{type(err).__name__}: {err}", "other"))
        else:
            self._inbox.put(("loaded", name, token, adapter))
        self.wake()

    def _publish(self, demand: dict[str, Demand]) -> None:
        # None: loaded; "": loading; else the reason of its failed load. A removed adapter keeps its series
        # until its last request finished.
        states = {e.name: None if e.loaded else e.reason or "" for e in self._residency.entries.values()}
        resident = sum(e.status is Status.RESIDENT for e in self._residency.entries.values())
        running = tuple(sorted(name for name, use in demand.items() if use.running))
        waiting = tuple(sorted(name for name, use in demand.items() if use.waiting))
        self._metrics.publish(states, resident, running, waiting, time.time())

    def _mark_ready(self) -> None:
        if not self.ready.is_set():
            names = sorted(self._residency.entries)
            log.info("LoRA adapters tried once each: %s", ", ".join(names) if names else "none configured")
        self.ready.set()


def _demand(scheduler) -> dict[str, Demand]:
    """Each adapter's requests in the scheduler (runs every step: kept to plain loops)."""
    waiting: dict[str, int] = {}
    oldest: dict[str, float] = {}
    for request in scheduler.waiting:
        name = request.adapter
        if name is None:
            continue
        if name in waiting:
            waiting[name] += 1
            if request.arrival < oldest[name]:
                oldest[name] = request.arrival
        else:
            waiting[name], oldest[name] = 1, request.arrival
    running: dict[str, int] = {}
    for request in scheduler.running:
        if request.adapter is not None:
            running[request.adapter] = running.get(request.adapter, 0) + 1
    return {
        name: Demand(waiting.get(name, 0), running.get(name, 0), oldest.get(name, math.inf))
        for name in waiting.keys() | running.keys()
    }
