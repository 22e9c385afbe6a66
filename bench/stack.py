"""The local stack a benchmark runs on: the running one of `make cluster-up`, or a fresh one it starts and
stops (also when the benchmark is killed with SIGTERM, which would otherwise leave the stack's processes)."""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from localcluster import LocalCluster

from tests.integration.operator_support import install_crd  # bench scripts put the repo on sys.path


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, so the fresh stack is stopped


def on_local_stack(state_dir: Path | None, workdir: Path, run: Callable[[LocalCluster], dict]) -> dict:
    """run(cluster) on the stack in `state_dir` (which must be running), or on a fresh one under `workdir`;
    the result says which."""
    if state_dir:
        cluster = LocalCluster(state_dir.resolve())
        if not cluster.running():
            raise SystemExit(f"no running local stack in {state_dir} (make cluster-up)")
        return {**run(cluster), "cluster": "existing"}
    cluster = LocalCluster(workdir / "cluster")
    print("bench: starting a fresh local stack", file=sys.stderr, flush=True)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        cluster.up()
        return {**run(cluster), "cluster": "fresh local stack"}
    finally:
        cluster.down()
        signal.signal(signal.SIGTERM, previous)


def fresh_namespace(cluster: LocalCluster) -> str:
    """The CRD installed (or updated) and a namespace of the benchmark's own."""
    install_crd(cluster)
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    return namespace
