"""Stopping the real processes a test started, as a kubelet stops a container."""

from __future__ import annotations

import signal
import subprocess


def terminate(process: subprocess.Popen | None, grace_s: float = 30) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `grace_s`; nothing if it is gone already."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
