"""Which track a request goes to: the canary gets exactly its share of requests. Pure.

The share is what a Service gives it today, per pod: each Ready pod of either track weighs the same, so with
`canaryReplicas` Ready canary pods beside N stable ones the canary gets canaryReplicas / (N + canaryReplicas)
of the requests. The track is chosen before the pod, by smooth weighted round robin (nginx's): over any run of
requests the split is exact to one request, whatever the pods' load, so a slow canary is not spared the load
its analysis must see (a load-aware pick across tracks would starve it). The pod is then picked in turn inside
each track while the canary takes requests (RouterState.choose), so that every pod faces the same arrivals.

The canary track is routable only while the ModelDeployment's status has a canary (`status.canary`) that is not
among `status.rejectedRevisions` and not baking: the moment the operator writes a rejection, its pods get no
more requests, before their Deployment is even deleted. Through the phases Starting, Analyzing, Holding and
Promoting it gets its share; once it is Baking it is the stable revision (status.canary.previousRevision is
what a failed bake restores), served by the stable track, and the canary Deployment's pods, on their way out,
get none. Without a status read yet (the watch not synced, or not allowed), the Ready pods decide alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STABLE, CANARY = "stable", "canary"
TRACKS = (STABLE, CANARY)
BAKING = "Baking"  # status.canary.phase once the revision is promoted and judged as the stable one


def canary_routable(status: Mapping[str, Any] | None) -> bool:
    if status is None:
        return True
    canary = status.get("canary")
    if not isinstance(canary, Mapping) or not canary.get("revision") or canary.get("phase") == BAKING:
        return False
    rejected = {r.get("revision") for r in status.get("rejectedRevisions") or () if isinstance(r, Mapping)}
    return canary["revision"] not in rejected


def weights(ready_by_track: Mapping[str, int], canary_allowed: bool) -> dict[str, int]:
    """Requests per turn for each track that can take any: its Ready pods."""
    out = {track: n for track, n in ready_by_track.items() if n > 0}
    if not canary_allowed:
        out.pop(CANARY, None)
    return out


@dataclass
class TrackTurns:
    """Smooth weighted round robin over the tracks; the weights may change between any two picks."""

    _current: dict[str, int] = field(default_factory=dict)

    def next(self, track_weights: Mapping[str, int]) -> str | None:
        live = {t: w for t, w in track_weights.items() if w > 0}
        if not live:
            return None
        self._current = {t: self._current.get(t, 0) for t in live}
        for track, weight in live.items():
            self._current[track] += weight
        chosen = max(sorted(live), key=lambda t: self._current[t])
        self._current[chosen] -= sum(live.values())
        return chosen
