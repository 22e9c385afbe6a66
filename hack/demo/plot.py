"""The demo's picture: queue depth, replicas and p99 latency over time, with the scale and rollout moments."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

MARKED = {  # Event reason -> colour of its line
    "Scaled": "tab:blue",
    "CanaryStarted": "tab:orange",
    "RolledBack": "tab:red",
    "Promoted": "tab:green",
    "PromotionComplete": "tab:green",
    "BakeComplete": "tab:green",
}


def draw(samples, events, start: float, out: Path) -> Path:
    samples = list(samples)  # one copy: every series gets the same points even if the caller's list grows
    t = [s.at - start for s in samples]
    figure, (queue, replicas, latency) = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    queue.plot(t, [s.queue if s.queue is not None else float("nan") for s in samples], color="tab:purple")
    queue.set_ylabel("requests waiting")
    queue.set_title("moedeploy demo: queue-depth autoscaling and canary analysis (figures from Prometheus)")
    replicas.step(t, [s.desired for s in samples], where="post", label="desired (stable track)")
    replicas.step(t, [s.ready for s in samples], where="post", label="ready (both tracks)", linestyle="--")
    replicas.set_ylabel("pods")
    replicas.legend(loc="upper left")
    latency.plot(
        t, [s.p99_stable if s.p99_stable is not None else float("nan") for s in samples], label="stable p99"
    )
    latency.plot(
        t, [s.p99_canary if s.p99_canary is not None else float("nan") for s in samples], label="canary p99"
    )
    latency.set_ylabel("p99 latency (s)")
    latency.set_xlabel("seconds since the ModelDeployment was applied")
    latency.legend(loc="upper left")
    for at, _, reason, _ in events:
        if reason in MARKED and at >= start:
            for axis in (queue, replicas, latency):
                axis.axvline(at - start, color=MARKED[reason], alpha=0.35, linewidth=1)
            queue.annotate(reason, (at - start, 0), rotation=90, fontsize=7, color=MARKED[reason],
                           xytext=(2, 2), textcoords="offset points")  # fmt: skip
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
