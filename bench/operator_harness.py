"""The operator as a benchmark runs it: a subprocess with an open policy and its own /metrics, plus what the
benches read about it (CPU time, peak memory, reconcile counters, log errors)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.runtime_server.harness import free_port  # bench scripts put the repo on sys.path

ROOT = Path(__file__).resolve().parents[1]
# benches deploy test images from anywhere: a policy that allows it (the chart's default is strict)
OPEN_POLICY = {
    "allowedSourceKinds": ["*"],
    "allowedHostPathPrefixes": ["*"],
    "allowedImagePrefixes": ["*"],
    "allowedTolerationKeys": ["*"],
}


class OperatorUnderTest:
    def __init__(self, kubeconfig: Path, workdir: Path, args: list[str]) -> None:
        self.metrics_port = free_port()
        policy = workdir / "policy.yaml"
        policy.write_text(yaml.safe_dump(OPEN_POLICY))
        self.log_path = workdir / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "moe_operator", "run", "--policy-file", str(policy),
                   "--metrics-port", str(self.metrics_port), *args]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def metrics(self) -> dict[str, float]:
        """Every sample of the operator's /metrics, keyed by name and labels (`name{a="1"}`)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return round(
            next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024, 1
        )

    def log_problems(self) -> dict:
        lines = self.log_path.read_text(errors="replace").splitlines()
        errors = [line for line in lines if "[ERROR" in line or line.startswith("Traceback")]
        warnings = [line for line in lines if "[WARNING" in line]
        return {
            "operator_log_errors": len(errors),
            "operator_log_warnings": len(warnings),
            "first_errors": errors[:3],
            "first_warnings": warnings[:3],
        }


def reconcile_passes(metrics: dict[str, float]) -> int:
    return int(sum(v for k, v in metrics.items() if k.startswith("moe_operator_reconcile_total")))
