"""One container's life as a kubelet runs it: start, probes, exits, restarts with back-off, and the stop
procedure (preStop delay, SIGTERM, grace period, SIGKILL). Pure: time comes in as `now` (seconds), the
caller does the I/O the returned actions name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from localkubelet.probes import Count, Probe, initial_count, record

# The kubelet's container restart back-off: the first restart is immediate, then 10 s doubling up to
# 5 minutes; a container that ran for twice the cap before exiting starts over.
BACKOFF_INITIAL_S = 10.0
BACKOFF_CAP_S = 300.0
MIN_GRACE_AFTER_PRESTOP_S = 2.0  # what the kubelet leaves for SIGTERM when preStop used up the grace period


def restart_delay(
    exits_in_a_row: int, initial: float = BACKOFF_INITIAL_S, cap: float = BACKOFF_CAP_S
) -> float:
    """Seconds between the n-th exit in a row and the restart that follows it."""
    if exits_in_a_row <= 1:
        return 0.0
    return min(cap, initial * 2 ** min(exits_in_a_row - 2, 64))


class State(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    TERMINATED = "terminated"  # exited and not restarted (restartPolicy)


@dataclass(frozen=True)
class Exit:
    exit_code: int
    reason: str  # Completed, Error
    started_at: float
    finished_at: float


def exit_code(returncode: int) -> int:
    """A container runtime's exit code: a death by signal N shows as 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Stop:
    """The stop procedure under way: SIGTERM once preStop is over, SIGKILL at the deadline."""

    sigterm_at: float
    deadline: float
    then_restart: bool  # a failed probe restarts the container; a deletion removes the pod
    reason: str
    sigterm_sent: bool = False
    sigkill_sent: bool = False


def plan_stop(now: float, grace: float, prestop_sleep: float, then_restart: bool, reason: str) -> Stop:
    sigterm_at = now + min(prestop_sleep, grace)
    deadline = max(now + grace, sigterm_at + MIN_GRACE_AFTER_PRESTOP_S)
    return Stop(sigterm_at, deadline, then_restart, reason)


class Signal(Enum):
    TERM = "SIGTERM"
    KILL = "SIGKILL"


def stop_signal(stop: Stop, now: float) -> Signal | None:
    """The signal the stop procedure sends now, if any (marks it sent)."""
    if not stop.sigkill_sent and now >= stop.deadline:
        stop.sigkill_sent = True
        return Signal.KILL
    if not stop.sigterm_sent and now >= stop.sigterm_at:
        stop.sigterm_sent = True
        return Signal.TERM
    return None


@dataclass
class Container:
    restart_policy: str = "Always"
    probes: dict[str, Probe] = field(default_factory=dict)
    backoff_initial: float = BACKOFF_INITIAL_S
    backoff_cap: float = BACKOFF_CAP_S
    state: State = State.WAITING
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    started_at: float | None = None
    restart_count: int = 0
    last_exit: Exit | None = None
    exits_in_a_row: int = 0
    restart_at: float = 0.0
    started: bool = False  # the startup probe passed (or there is none)
    counts: dict[str, Count] = field(default_factory=dict)
    next_probe: dict[str, float] = field(default_factory=dict)
    stop: Stop | None = None

    # ---- reading -------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING

    @property
    def ready(self) -> bool:
        if not self.running or not self.started:
            return False
        readiness = self.probes.get("readinessProbe")
        return readiness is None or self.counts["readinessProbe"].result is True

    def due_to_start(self, now: float) -> bool:
        return self.state is State.WAITING and self.stop is None and now >= self.restart_at

    def due_probes(self, now: float) -> list[str]:
        return [kind for kind, at in self.next_probe.items() if self.running and now >= at]

    # ---- events ----------------------------------------------------------------------------------------

    def started_process(self, now: float) -> None:
        if self.last_exit is not None:
            self.restart_count += 1
        self.state, self.started_at, self.waiting_reason, self.waiting_message = State.RUNNING, now, "", ""
        self.counts = {kind: initial_count(kind) for kind in self.probes}
        self.started = "startupProbe" not in self.probes
        self.next_probe = {}
        if self.started:
            self._schedule_after_startup(now)
        else:
            self.next_probe["startupProbe"] = now + self.probes["startupProbe"].initial_delay

    def could_not_start(self, reason: str, message: str, retry_at: float) -> None:
        self.state, self.waiting_reason, self.waiting_message = State.WAITING, reason, message
        self.restart_at = retry_at

    def probed(self, kind: str, ok: bool, now: float) -> str | None:
        """Counts one probe result; the reason to restart the container when it must be."""
        if not self.running or kind not in self.next_probe:
            return None
        probe = self.probes[kind]
        self.counts[kind] = record(self.counts[kind], ok, probe)
        self.next_probe[kind] = now + probe.period
        result = self.counts[kind].result
        if kind == "startupProbe" and result:
            self.started = True
            del self.next_probe[kind]
            self._schedule_after_startup(now)
        elif kind in ("startupProbe", "livenessProbe") and result is False and self.stop is None:
            for other in list(self.next_probe):
                del self.next_probe[other]
            return f"{'Startup' if kind == 'startupProbe' else 'Liveness'} probe failed"
        return None

    def exited(self, returncode: int, now: float) -> None:
        started_at = self.started_at if self.started_at is not None else now
        code = exit_code(returncode)
        self.last_exit = Exit(code, "Completed" if code == 0 else "Error", started_at, now)
        self.started, self.next_probe, self.started_at = False, {}, None
        restart = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)
        if not restart:
            self.state = State.TERMINATED
            return
        if now - started_at >= 2 * self.backoff_cap:
            self.exits_in_a_row = 0
        self.exits_in_a_row += 1
        delay = restart_delay(self.exits_in_a_row, self.backoff_initial, self.backoff_cap)
        self.state, self.restart_at = State.WAITING, now + delay
        if delay > 0:
            self.waiting_reason = "CrashLoopBackOff"
            self.waiting_message = f"back-off {delay:g}s restarting failed container"
        else:
            self.waiting_reason, self.waiting_message = "ContainerCreating", ""

    def _schedule_after_startup(self, now: float) -> None:
        # as Kubernetes does, readiness is probed right after the startup probe passed, not a period later
        assert self.started_at is not None
        for kind in ("livenessProbe", "readinessProbe"):
            if kind in self.probes:
                self.next_probe[kind] = max(now, self.started_at + self.probes[kind].initial_delay)
