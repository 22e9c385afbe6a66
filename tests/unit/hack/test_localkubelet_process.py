"""The local kubelet's SIGKILL reaches every process of a container, as a container runtime's does: vLLM's API
server leaves its engine core and workers behind otherwise (hack/localkubelet/process.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from localkubelet.process import descendants, send

from tests.waiting import wait_for


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_takes_the_whole_tree_and_sigterm_only_the_container_process():
    tree = subprocess.Popen(["bash", "-c", "bash -c 'sleep 300 & wait' & sleep 300 & wait"])
    try:
        grandchildren = wait_for(
            lambda: len(d := descendants(tree.pid)) >= 3 and d, timeout=10, what="the tree"
        )
        send(tree, signal.SIGKILL)
        tree.wait(timeout=10)
        wait_for(
            lambda: not any(alive(pid) for pid in grandchildren), timeout=10, what="every descendant gone"
        )
    finally:
        for pid in descendants(tree.pid):
            os.kill(pid, signal.SIGKILL)
    term = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 300 & wait"])
    try:
        (child,) = wait_for(lambda: descendants(term.pid), timeout=10, what="the sleep")
        send(term, signal.SIGTERM)
        time.sleep(0.5)
        assert alive(child), "SIGTERM is the process's to pass on"
    finally:
        send(term, signal.SIGKILL)
        term.wait(timeout=10)
