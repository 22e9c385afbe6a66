"""Real runtime server processes for the integration tests and the serving benchmarks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.paths import ROOT as REPO
from tests.processes import terminate
from tests.waiting import wait_until_serving

STARTUP_TIMEOUT_S = 180.0


def write_checkpoint(out: Path, *size_options: str) -> Path:
    """A tiny random Qwen2-MoE checkpoint with its tokenizer, written by the runtime's own CLI."""
    command = [
        sys.executable,
        "-m",
        "moe_runtime",
        "make-checkpoint",
        "--family",
        "qwen2_moe",
        "--out",
        str(out),
    ]
    subprocess.run([*command, *size_options], cwd=out.parent, check=True, capture_output=True, timeout=300)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVE = ("-m", "moe_runtime", "serve")
FAULTY_SERVE = ("-m", "tests.integration.runtime_server.faulty_serve")  # see MOE_TEST_FAULT there


class RuntimeServer:
    """`python -m moe_runtime serve` (or another `entry`) on a free loopback port; a context manager that waits
    until ready."""

    def __init__(
        self,
        model_dir: Path,
        *options: str,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        entry: tuple[str, ...] = SERVE,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or model_dir.parent / f"server-{self.port}.log"
        self.command = [
            sys.executable, *entry,
            "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(self.port), *options,
        ]  # fmt: skip
        # One intra-op thread unless told otherwise: on a small machine shared with other work, torch's
        # spinning worker threads made a decode step 30x slower.
        self._env = {"OMP_NUM_THREADS": "1", **os.environ, **(env or {})}
        if entry != SERVE:  # the entry point lives in the tests package
            self._env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), self._env.get("PYTHONPATH")]))
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> RuntimeServer:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, env=self._env, stdout=log, stderr=log)
        self.wait_ready()
        return self

    def __exit__(self, *exc) -> None:
        terminate(self.process, grace_s=60)

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        wait_until_serving(f"{self.url}/ready", self.process, self.log, timeout_s)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


class Timed:
    """One request as a client saw it."""

    def __init__(self, status: int, latency_s: float, ttft_s: float | None, completion_tokens: int) -> None:
        self.status, self.latency_s, self.ttft_s, self.completion_tokens = (
            status,
            latency_s,
            ttft_s,
            completion_tokens,
        )


async def timed_completion(client: httpx.AsyncClient, url: str, body: dict) -> Timed:
    """POSTs a streamed completion; times the first event and the whole answer. Status -1: an error event
    arrived after the headers."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft, tokens, status = None, 0, 200
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return Timed(response.status_code, time.perf_counter() - start, None, 0)
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            if ttft is None:
                ttft = time.perf_counter() - start
            event = json.loads(line.removeprefix("data: "))
            if "error" in event:
                status = -1
            elif event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return Timed(status, time.perf_counter() - start, ttft, tokens)


async def timed_request(client: httpx.AsyncClient, url: str, body: dict) -> Timed:
    """POSTs a completion without streaming and times the answer."""
    start = time.perf_counter()
    response = await client.post(f"{url}/v1/completions", json=body)
    tokens = response.json()["usage"]["completion_tokens"] if response.status_code == 200 else 0
    return Timed(response.status_code, time.perf_counter() - start, None, tokens)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """A runtime's /metrics: (name, sorted labels) -> value."""
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))
