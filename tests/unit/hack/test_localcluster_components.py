"""The local control plane tells a component that is starting from one that died (hack/localcluster.py)."""

from __future__ import annotations

import signal

from localcluster import _alive, exited, start_component


def test_a_component_just_started_is_not_taken_for_dead(tmp_path):
    # Right after the start, /proc/<pid>/cmdline can still be empty; CI once read the apiserver as exited
    # there and tore the stack down under it.
    for attempt in range(200):
        started = {"sleeper": start_component(tmp_path / f"sleeper-{attempt}.log", ["sleep", "30"])}
        try:
            assert exited(started) == [], f"attempt {attempt}"
            assert _alive(started["sleeper"].pid, "sleep"), f"attempt {attempt}: down would not stop it"
        finally:
            started["sleeper"].send_signal(signal.SIGKILL)
            started["sleeper"].wait(timeout=10)
        assert exited(started) == ["sleeper"]
        assert not _alive(started["sleeper"].pid, "sleep")


def test_a_component_that_fails_is_named_with_its_output_in_its_log(tmp_path):
    log = tmp_path / "failing.log"
    started = {"failing": start_component(log, ["sh", "-c", "echo no such flag >&2; exit 3"])}
    started["failing"].wait(timeout=10)
    assert exited(started) == ["failing"]
    assert log.read_text() == "no such flag\n"
