"""Which pod gets a request, by the strategy of `spec.routing`. Pure.

Each candidate is a Ready pod of the track the request goes to, with what the router knows of its load: the
last scrape of its own gauges (requests waiting and running, KV cache use, active adapters; every client's
requests, a fraction of a second old) and this router's requests on it right now (exact, no lag) with their
estimated cost in tokens (prompt + max_tokens).

- RoundRobin: the next pod in turn, per request (a Service's kube-proxy picks per connection).
- LeastLoad: the least loaded pod: this router's outstanding tokens there plus its waiting queue at the mean
  request cost, then KV cache use, then fewest of this router's requests; ties go round in turn.
- PrefixAware (the default): LeastLoad, except that a request whose prompt starts with blocks the router sent
  to a pod before goes to the pod with the longest such match while that pod is not overloaded (its load at
  most `overload_tokens` above the least loaded candidate's), so its prefix cache is hit.
Under LeastLoad and PrefixAware a request for a LoRA adapter prefers the pods where that adapter is active
(running or waiting requests), then pods with room for another adapter, unless those are overloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from moe_runtime.router.load import PodLoad

DEFAULT_OVERLOAD_TOKENS = 2048


class Strategy(StrEnum):
    ROUND_ROBIN = "RoundRobin"
    LEAST_LOAD = "LeastLoad"
    PREFIX_AWARE = "PrefixAware"


@dataclass(frozen=True)
class Candidate:
    pod: str
    load: PodLoad | None = None  # None: not scraped yet
    in_flight: int = 0
    outstanding_tokens: int = 0
    prefix_blocks: int = 0  # leading prompt blocks the router last sent to this pod

    def load_tokens(self, mean_cost: float) -> float:
        waiting = self.load.waiting if self.load else 0.0
        return self.outstanding_tokens + waiting * mean_cost


@dataclass(frozen=True)
class Pick:
    pod: str
    reason: str  # a label value for the picks metric: turn, load, prefix, adapter


@dataclass
class Picker:
    strategy: Strategy = Strategy.PREFIX_AWARE
    overload_tokens: float = DEFAULT_OVERLOAD_TOKENS
    _turn: int = field(default=0, repr=False)

    def pick(self, candidates: Sequence[Candidate], mean_cost: float, adapter: str | None = None) -> Pick:
        if not candidates:
            raise ValueError("no candidate to pick from")
        ordered = sorted(candidates, key=lambda c: c.pod)
        self._turn += 1
        if self.strategy is Strategy.ROUND_ROBIN:
            return Pick(ordered[self._turn % len(ordered)].pod, "turn")
        lightest = min(c.load_tokens(mean_cost) for c in ordered)
        bearable = [c for c in ordered if c.load_tokens(mean_cost) <= lightest + self.overload_tokens]
        reason = "load"
        if adapter is not None:
            preferred = _adapter_affinity(bearable, adapter)
            if preferred:
                ordered, reason = preferred, "adapter"
        if self.strategy is Strategy.PREFIX_AWARE:
            longest = max(c.prefix_blocks for c in ordered)
            if longest > 0:
                held = [c for c in ordered if c.prefix_blocks == longest and c in bearable]
                if held:
                    return Pick(self._least(held, mean_cost).pod, "prefix")
        return Pick(self._least(ordered, mean_cost).pod, reason)

    def _least(self, candidates: Sequence[Candidate], mean_cost: float) -> Candidate:
        def key(c: Candidate) -> tuple[float, float, int]:
            kv = c.load.kv_cache_usage if c.load else 0.0
            return (c.load_tokens(mean_cost), kv, c.in_flight)

        best = min(key(c) for c in candidates)
        tied = [c for c in candidates if key(c) == best]
        return tied[self._turn % len(tied)]


def _adapter_affinity(candidates: Sequence[Candidate], adapter: str) -> list[Candidate]:
    """The candidates where the adapter is active; else those with room for one more; else none."""
    active = [c for c in candidates if c.load and adapter in c.load.active_adapters]
    if active:
        return active
    return [
        c
        for c in candidates
        if c.load and c.load.max_loras and len(c.load.active_adapters) < c.load.max_loras
    ]
