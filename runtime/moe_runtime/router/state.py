"""What the router knows and does per request, on its event loop: the Ready endpoints (from discovery), the
pods' load (from the scraper), this router's requests on each pod, the prefix table; choosing a pod for a
request, and waiting for one while none is Ready."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from moe_runtime.router.endpoints import Endpoint
from moe_runtime.router.load import PodLoad
from moe_runtime.router.metrics import RouterMetrics
from moe_runtime.router.picker import Candidate, Picker, Strategy
from moe_runtime.router.prefix import DEFAULT_BLOCK_CHARS, PrefixTable, block_hashes
from moe_runtime.router.requests import RequestView
from moe_runtime.router.tracks import CANARY, TRACKS, TrackTurns, canary_routable, weights

# A pod that refused a connection or a request (503 draining or loading, 429 queue full) is passed over for
# this long while others can take the request, so that one broken pod costs one retry, not one per request.
SUSPECT_S = 5.0
MEAN_COST_START = 256.0
MEAN_COST_WEIGHT = 0.05  # of each new request in the running mean of request cost


@dataclass(frozen=True)
class Choice:
    endpoint: Endpoint
    reason: str


class RouterState:
    def __init__(
        self,
        picker: Picker,
        metrics: RouterMetrics,
        served_model: str | None = None,
        prefix_table: PrefixTable | None = None,
        block_chars: int = DEFAULT_BLOCK_CHARS,
    ) -> None:
        self.picker, self.metrics, self.served_model = picker, metrics, served_model
        self.prefixes = prefix_table or PrefixTable()
        self.block_chars = block_chars
        self.endpoints: dict[str, Endpoint] = {}
        self.canary_allowed = True
        self.loads: dict[str, PodLoad] = {}
        self.in_flight: Counter[str] = Counter()
        self.outstanding: Counter[str] = Counter()
        self.mean_cost = MEAN_COST_START
        self._turns = TrackTurns()
        # while a canary takes requests, each track's pods in turn (see choose)
        self._pods_in_turn = {track: Picker(Strategy.ROUND_ROBIN) for track in TRACKS}
        self._routable = asyncio.Event()
        self._changed = asyncio.Event()
        self._suspect: dict[str, float] = {}  # address -> until (monotonic)

    # ---- what discovery and the scraper report -------------------------------------------------------------

    def update(self, endpoints: Mapping[str, Endpoint], status: Mapping[str, Any] | None) -> None:
        gone = {e.pod for e in self.endpoints.values()} - {e.pod for e in endpoints.values()}
        self.endpoints = dict(endpoints)
        self.canary_allowed = canary_routable(status)
        for pod in gone:
            self.prefixes.forget(pod)
            self.metrics.forget_pod(pod)
        for address in set(self.loads) - set(endpoints):
            del self.loads[address]
        ready = Counter(e.track for e in self.endpoints.values() if e.ready)
        for track in TRACKS:
            self.metrics.ready_endpoints.labels(track=track).set(ready[track])
        if self.routable():
            self._routable.set()
        else:
            self._routable.clear()
        self._changed.set()
        self._changed = asyncio.Event()

    def routable(self, exclude: Collection[str] = ()) -> list[Endpoint]:
        """Ready endpoints of the tracks that take requests now, less `exclude` (addresses), and less the pods
        that just refused one while others remain."""
        found = [
            e
            for e in self.endpoints.values()
            if e.ready and e.address not in exclude and (self.canary_allowed or e.track != "canary")
        ]
        now = time.monotonic()
        trusted = [e for e in found if self._suspect.get(e.address, 0.0) <= now]
        return trusted or found

    def suspect(self, address: str, seconds: float = SUSPECT_S) -> None:
        """`address` refused a connection or a request: pass it over for a while."""
        self._suspect[address] = time.monotonic() + seconds
        if len(self._suspect) > 4 * max(1, len(self.endpoints)):
            now = time.monotonic()
            self._suspect = {a: t for a, t in self._suspect.items() if t > now}

    def changed(self) -> asyncio.Event:
        """An event set at the next update of the endpoints."""
        return self._changed

    # ---- per request -----------------------------------------------------------------------------------------

    def choose(self, view: RequestView, exclude: Collection[str] = ()) -> Choice | None:
        routable = self.routable(exclude)
        if not routable:
            return None
        by_track = Counter(e.track for e in routable)
        track = self._turns.next(weights(by_track, canary_allowed=True))
        pool = sorted((e for e in routable if e.track == track), key=lambda e: e.address)
        model = view.model or self.served_model or ""
        hashes = block_hashes(model, view.prompt, self.block_chars) if view.prompt else []
        matched = self.prefixes.matches(hashes, {e.pod for e in pool}) if hashes else {}
        candidates = [
            Candidate(
                pod=e.address,
                load=self.loads.get(e.address),
                in_flight=self.in_flight[e.address],
                outstanding_tokens=self.outstanding[e.address],
                prefix_blocks=matched.get(e.pod, 0),
            )
            for e in pool
        ]
        adapter = view.model if view.model and view.model != self.served_model else None
        # While a canary is judged against the stable track, every pod of both gets the same requests in turn.
        # Picking the least loaded stable pod would pool the stable track's queues (the shortest one takes the
        # next request) while the canary's one pod queues alone: at the same speed, its time to first token
        # would come out several times the stable track's.
        picker = self._pods_in_turn[track] if by_track[CANARY] else self.picker
        pick = picker.pick(candidates, self.mean_cost, adapter)
        endpoint = next(e for e in pool if e.address == pick.pod)
        if hashes:
            self.prefixes.record(hashes, endpoint.pod)
        return Choice(endpoint, pick.reason)

    def begin(self, endpoint: Endpoint, cost: int) -> None:
        self.in_flight[endpoint.address] += 1
        self.outstanding[endpoint.address] += cost
        self.mean_cost += MEAN_COST_WEIGHT * (cost - self.mean_cost)

    def end(self, endpoint: Endpoint, cost: int) -> None:
        self.in_flight[endpoint.address] -= 1
        self.outstanding[endpoint.address] -= cost
        if self.in_flight[endpoint.address] <= 0:
            del self.in_flight[endpoint.address]
            self.outstanding.pop(endpoint.address, None)
