"""Polling for a condition in tests that watch real processes converge or start serving."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float = 60, interval: float = 0.3, what: str = "condition"
) -> T:
    """The first truthy value of predicate(); AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until GET url answers 200; RuntimeError with the log's tail if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-5000:]
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no 200 from {url} after {timeout}s:\n{log.read_text(errors='replace')[-5000:]}")
