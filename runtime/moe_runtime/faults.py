"""Faults a revision can be told to have (`--inject-faults`, MOE_RUNTIME_INJECT_FAULTS): a bad revision on
purpose, to rehearse a rollout and check that its analysis rolls it back, as Envoy's and Istio's fault
injection do for services. Off unless set; every fault still answers every request it accepted.

    token_delay=S        every engine step takes S seconds longer: each token of every request is slower
    long_prompt=N:S      a step that starts a prompt longer than N tokens takes S seconds longer
    hang_every=N:S       the step that starts every N-th request hangs for S seconds (a pathological input: every
                         request on the pod waits; they all finish, very late)
    unhealthy_after=N    after N requests, /health answers 503: the liveness probe restarts the container
    when=PATH            the faults above act only while the file PATH exists (a test turns them on and off)

e.g. `--inject-faults token_delay=0.05` or `--inject-faults hang_every=5:60,unhealthy_after=200`.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass


class FaultError(ValueError):
    pass


@dataclass(frozen=True)
class FaultSpec:
    token_delay_s: float = 0.0
    long_prompt: tuple[int, float] | None = None  # (tokens, seconds)
    hang_every: tuple[int, float] | None = None  # (every n-th request, seconds)
    unhealthy_after: int | None = None
    when: str | None = None  # a file: the faults act only while it exists

    @classmethod
    def parse(cls, text: str | None) -> FaultSpec:
        if not text:
            return cls()
        values: dict = {}
        for item in (part.strip() for part in text.split(",") if part.strip()):
            key, _, value = item.partition("=")
            try:
                if key == "token_delay":
                    values["token_delay_s"] = _seconds(value)
                elif key == "long_prompt":
                    tokens, seconds = value.split(":")
                    values["long_prompt"] = (_count(tokens), _seconds(seconds))
                elif key == "hang_every":
                    every, seconds = value.split(":")
                    values["hang_every"] = (_count(every), _seconds(seconds))
                elif key == "unhealthy_after":
                    values["unhealthy_after"] = _count(value)
                elif key == "when":
                    if not value:
                        raise ValueError("needs a file path")
                    values["when"] = value
                else:
                    raise FaultError(
                        f"unknown fault {key!r} (token_delay, long_prompt, hang_every, unhealthy_after, when)"
                    )
            except ValueError as err:
                raise FaultError(f"--inject-faults {item!r}: {err}") from None
        return cls(**values)


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(f"seconds must be at least 0, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {text}")
    return value


class Faults:
    """The faults of one process. `after_step` runs on the engine thread, the rest on the event loop."""

    def __init__(self, spec: FaultSpec = FaultSpec()) -> None:
        self.spec = spec
        self._requests = itertools.count(1)
        self._seen = 0
        self._started = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.spec != FaultSpec()

    def _on(self) -> bool:
        return self.spec.when is None or os.path.exists(self.spec.when)

    def before_request(self) -> None:
        """Counts an accepted request (for unhealthy_after)."""
        with self._lock:
            self._seen = next(self._requests)

    def after_step(self, started_prompts: list[int]) -> None:
        """Called after each engine step with the prompt lengths of the requests whose prefill began in it."""
        if not self.active:
            return
        numbers = [next(self._started) for _ in started_prompts]
        if not self._on():
            return
        delay, spec = self.spec.token_delay_s, self.spec
        if spec.long_prompt is not None and any(n > spec.long_prompt[0] for n in started_prompts):
            delay += spec.long_prompt[1]
        if spec.hang_every is not None and any(n % spec.hang_every[0] == 0 for n in numbers):
            delay += spec.hang_every[1]
        if delay:
            time.sleep(delay)

    def unhealthy(self) -> str | None:
        limit = self.spec.unhealthy_after
        if limit is not None and self._seen >= limit and self._on():
            return f"injected fault: unhealthy after {limit} requests"
        return None
