"""A real Prometheus server (Debian's `prometheus`) on loopback, scraping the targets a test names.

Static targets carry the labels the operator's queries rely on (`namespace`, `model_deployment`,
`revision`), as the chart's PodMonitor relabelling gives them in a cluster.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_api_client import PrometheusConnect

from tests.integration.runtime_server.harness import free_port
from tests.waiting import wait_until_serving

SCRAPE_INTERVAL = "1s"


class PrometheusServer:
    def __init__(self, workdir: Path, targets: dict[str, dict[str, str]]):
        """targets: host:port -> the labels Prometheus attaches to every series scraped from it."""
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = targets
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> PrometheusServer:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [{
                "job_name": "moe-runtime",
                "static_configs": [{"targets": [target], "labels": labels} for target, labels in self.targets.items()],
            }],
        }))  # fmt: skip
        self.log = self.workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until_serving(f"{self.url}/-/ready", self.process, self.log, timeout=60)
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def client(self) -> PrometheusConnect:
        return PrometheusConnect(url=self.url, disable_ssl=True)
