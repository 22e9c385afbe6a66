"""A router process against the real API server, fed EndpointSlices written here as the EndpointSlice
controller would write them, in front of real runtime servers on loopback (reached through an address map,
as the local stack's pods are)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.integration.runtime_server.harness import free_port
from tests.processes import terminate
from tests.waiting import wait_for, wait_until_serving

POD_HEADER = "x-moedeploy-pod"


class PodNetwork:
    """Fake pod IPs mapped to loopback ports: the address map file the router reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mapping: dict[str, str] = {}
        self._write()

    def add(self, ip: str, local: str) -> str:
        self.mapping[f"{ip}:8000"] = local
        self._write()
        return ip

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.mapping))
        os.replace(tmp, self.path)


def endpoint_slice(service: str, endpoints: list[tuple[str, str, bool]], name: str | None = None) -> dict:
    """A slice of `service`: (ip, pod, ready) per endpoint, port `http` 8000."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service}-slice",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "tests",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
                "targetRef": {"kind": "Pod", "name": pod},
            }
            for ip, pod, ready in endpoints
        ],
    }


class RouterProcess:
    def __init__(
        self, namespace: str, model_deployment: str, address_map: Path, log: Path, *options: str
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.command = [
            sys.executable, "-m", "moe_runtime", "router",
            "--model-deployment", model_deployment, "--namespace", namespace,
            "--host", "127.0.0.1", "--port", str(self.port), "--endpoint-address-map", str(address_map),
            "--scrape-interval", "0.1", *options,
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> RouterProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=log, env=os.environ.copy())
        wait_until_serving(f"{self.url}/ready", self.process, self.log, 30)
        return self

    def __exit__(self, *exc) -> None:
        terminate(self.process)

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics").text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def wait_endpoints(self, ready: int, track: str = "stable") -> None:
        wait_for(
            lambda: self.metric("moe_router_ready_endpoints", track=track) == ready,
            timeout=30, interval=0.05, what=f"{ready} ready {track} endpoints at the router",
        )  # fmt: skip
