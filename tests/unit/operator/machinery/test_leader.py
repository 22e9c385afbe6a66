"""Leader election: one writer at a time, whatever the API server's latency, a hung renewal or a shutdown."""

from __future__ import annotations

import threading
import time

from moe_operator.machinery.leader import LeaderElector, LeaseTimings
from tests.unit.operator.machinery.leases import FakeLeases
from tests.waiting import wait_for

FAST = LeaseTimings(lease_duration=1.5, renew_deadline=1.0, retry_period=0.1)


def elector(leases, name="a", on_lost=lambda: None, timings=FAST) -> LeaderElector:
    return LeaderElector(
        leases, "ns", "lease", name, on_started=lambda: None, on_lost=on_lost, timings=timings
    )


def test_a_leader_whose_renewal_hangs_stops_at_its_renew_deadline():
    """A renewal blocked in the API server must not keep the leader leading past renew_deadline: another
    replica takes the Lease lease_duration after the last renewal it saw, hung call or not."""
    leases, lost = FakeLeases(), threading.Event()
    leader = elector(leases, on_lost=lost.set)
    leader.start()
    try:
        wait_for(lambda: leader.leading, timeout=5, what="the Lease taken")
        leases.hang.set()
        hung_at = time.monotonic()
        wait_for(lost.is_set, timeout=FAST.renew_deadline + 1, what="the loss noticed while the call hangs")
        assert not leader.leading and not leader.may_write()
        assert time.monotonic() - hung_at <= FAST.renew_deadline + 0.5
    finally:
        leases.unhang.set()
        leader.stop(release=False)


def test_a_leader_may_write_only_while_its_last_renewal_holds():
    leases = FakeLeases()
    leader = elector(leases)
    assert not leader.may_write(), "not before it leads"
    leader.start()
    try:
        wait_for(leader.may_write, timeout=5, what="the fence open")
    finally:
        leader.stop()
    assert not leader.may_write(), "not after it stopped"
    assert leases.holder() == "", "a clean stop hands the Lease over"


# ---- many replicas, arbitrary latencies -------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from moe_operator.machinery.leader import Candidacy, Create, Read, Replace  # noqa: E402

TIMINGS = LeaseTimings(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)
WRITE_EVERY = 0.5
# a write the fence lets through must land within lease_duration - renew_deadline (5 s here)
LONGEST_WRITE = 4.5


class Simulation:
    """Replicas campaigning for one Lease in an API server that answers each request after its own delay
    (hung calls included), while each replica's workers write whenever its fence lets them; every write
    carries the term (leaseTransitions) its writer leads in."""

    def __init__(self, replicas: int, delays, stops: dict[int, float]) -> None:
        import heapq
        import itertools

        self.heapq, self.now, self.seq = heapq, 0.0, itertools.count()
        self.events: list = []
        self.delays = delays  # () -> seconds one way
        self.lease: dict | None = None
        self.version = 0
        self.landed: list[tuple[float, int, int, int]] = []  # (time, replica, its term, the Lease's term)
        self.candidacies = [Candidacy(f"r{i}", TIMINGS, lambda: self.now) for i in range(replicas)]
        self.stopped: set[int] = set()
        self.in_flight = [0] * replicas
        for i in range(replicas):
            self.at(self.delays() % TIMINGS.retry_period, self._begin_attempt, i)
            self.at(WRITE_EVERY * (i + 1) / replicas, self._work, i)
        for i, when in stops.items():
            self.at(when, self._stop, i)

    def at(self, when, action, *args) -> None:
        self.heapq.heappush(self.events, (when, next(self.seq), action, args))

    def run(self, until: float) -> None:
        while self.events and self.events[0][0] <= until:
            self.now, _, action, args = self.heapq.heappop(self.events)
            action(*args)

    # the API server
    def _serve(self, request):
        if isinstance(request, Read):
            return None if self.lease is None else (dict(self.lease), str(self.version))
        if isinstance(request, Create) and self.lease is not None:
            return False
        if isinstance(request, Replace) and request.resource_version != str(self.version):
            return False
        self.lease, self.version = dict(request.spec), self.version + 1
        return True

    # a replica's election loop: each request goes out now, lands later, and its answer comes back later still
    def _begin_attempt(self, i) -> None:
        if i in self.stopped:
            return
        attempt = self.candidacies[i].attempt()
        self._send(i, attempt, next(attempt))

    def _send(self, i, attempt, request) -> None:
        self.at(self.now + self.delays(), self._land, i, attempt, request)

    def _land(self, i, attempt, request) -> None:
        answer = self._serve(request)
        self.at(self.now + self.delays(), self._answer, i, attempt, answer)

    def _answer(self, i, attempt, answer) -> None:
        try:
            self._send(i, attempt, attempt.send(answer))
        except StopIteration:
            self.at(self.now + TIMINGS.retry_period, self._begin_attempt, i)

    # a replica's workers
    def _work(self, i) -> None:
        if i in self.stopped:
            return
        candidacy = self.candidacies[i]
        if candidacy.may_write():
            self.in_flight[i] += 1
            self.at(self.now + min(self.delays(), LONGEST_WRITE), self._write_lands, i, candidacy.term)
        self.at(self.now + WRITE_EVERY, self._work, i)

    def _write_lands(self, i, term) -> None:
        self.in_flight[i] -= 1
        self.landed.append((self.now, i, term, self.lease["leaseTransitions"]))

    # a clean stop: the workers end (their last writes land), then the Lease is handed over
    def _stop(self, i) -> None:
        self.stopped.add(i)
        self._release_when_idle(i)

    def _release_when_idle(self, i) -> None:
        if self.in_flight[i]:
            self.at(self.now + 0.1, self._release_when_idle, i)
            return
        holds = self.candidacies[i].may_write()
        self.candidacies[i].close()
        if holds and self.lease and self.lease["holderIdentity"] == f"r{i}":
            self.lease, self.version = (
                {**self.lease, "holderIdentity": "", "leaseDurationSeconds": 1},
                self.version + 1,
            )


@settings(max_examples=200, deadline=None)
@given(
    replicas=st.integers(2, 3),
    seed=st.integers(0, 2**32),
    hang_chance=st.sampled_from([0.0, 0.02, 0.1]),
    stops=st.dictionaries(st.integers(0, 2), st.floats(5, 150), max_size=2),
)
def test_never_two_writers_whatever_the_latencies_hangs_and_stops(replicas, seed, hang_chance, stops):
    """Requests to the API server take 0-2 s one way, now and then 20-60 s (a hung call); replicas stop
    cleanly at random. Every write that lands comes from the replica that holds the newest term: once a
    successor has taken the Lease, no write of an older leader lands."""
    import random

    rng = random.Random(seed)

    def delay() -> float:
        return rng.uniform(20, 60) if rng.random() < hang_chance else rng.uniform(0, 2)

    stops = {i: t for i, t in stops.items() if i < replicas}
    simulation = Simulation(replicas, delay, stops)
    simulation.run(until=300)
    for when, replica, term, lease_term in simulation.landed:
        assert term == lease_term, (
            f"at {when:.1f}s r{replica} wrote in term {term}, the Lease is in {lease_term}"
        )
    if not hang_chance and len(stops) < replicas:
        assert simulation.landed, "a replica that keeps running on a steady API server leads"
