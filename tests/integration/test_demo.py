"""`make demo` end to end, in its quick mode, on a local stack of its own and with a CPU burner beside it (its
rollback and its promotion are decisions made from measurements): the timeline it reports shows the whole loop,
no request failed, and nothing it started is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from localcluster import assets_dir

from tests.burner import cpu_burner
from tests.paths import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def referencing(*paths: str) -> list[int]:
    """Processes whose command line, environment or working folder mentions one of `paths`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            text = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
            text += os.readlink(proc / "cwd").encode()
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:
            continue
        if any(path.encode() in text for path in paths):
            found.append(int(proc.name))
    return found


def test_the_demo_runs_the_whole_loop_and_cleans_up(tmp_path):
    out, state = tmp_path / "out", tmp_path / "stack"
    env = {**os.environ, "KUBEBUILDER_ASSETS": str(assets_dir())}
    with cpu_burner():
        result = subprocess.run(
            [sys.executable, str(ROOT / "hack" / "demo"), "--quick", "--state-dir", str(state), "--out", str(out)],
            env=env, capture_output=True, text=True, timeout=1500,
        )  # fmt: skip
    timeline = json.loads((out / "timeline.json").read_text())
    assert result.returncode == 0 and timeline["ok"], result.stdout[-6000:] + result.stderr[-3000:]

    steps = {step["name"].split(".")[0]: step["figures"] for step in timeline["steps"]}
    assert steps["1"]["ready"] >= 1, "served"
    assert steps["2"]["completion_tokens"] > 0, "answered a chat request through the pods"
    assert int(steps["3"]["replicas"].split("->")[1]) >= 2, "scaled out under load"
    assert steps["4"]["reason"] == "SLOBreached" and steps["4"]["stable_template_unchanged"], "rolled back"
    assert steps["4"]["rule"] in ("Relative", "Hung", "Latency"), steps["4"]
    if steps["4"]["canary_p99"] and steps["4"]["stable_p99"]:
        assert steps["4"]["canary_p99"] > steps["4"]["stable_p99"], "judged slower than the stable track"
    assert steps["5"]["promoted"] and steps["5"]["promoted"] != steps["4"]["rejected"], "promoted"
    assert steps["6"]["replicas"].endswith("-> 1"), "scaled back in"
    assert steps["6"]["failed_requests"] == 0 and steps["6"]["requests"] > 0, "no request failed"
    reasons = [event[2] for event in timeline["events"]]
    for reason in ("Scaled", "CanaryStarted", "RolledBack", "Promoted", "PromotionComplete", "BakeComplete"):
        assert reason in reasons, f"no {reason} Event"
    assert (out / "demo.png").stat().st_size > 10_000, "the picture"

    assert not state.exists(), "the stack's folder was removed"
    assert referencing(timeline["state_dir"], timeline["workdir"]) == [], "a process of the demo is left"
