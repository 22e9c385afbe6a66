"""The adapter-sync sidecar against a real vLLM server (its CPU build, LoRA on, runtime adapter updates allowed):
not Ready before the engine answers; loads the listed adapters, which then serve; reports a refused load with
its reason and stays Ready; unloads what leaves the list; loads everything again into a restarted engine.

vLLM's CPU build serves LoRA only on a dense model (see support.write_dense_checkpoint), so the server here runs
a dense Qwen3 of the same shape as the MoE checkpoint the other vLLM tests serve.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.lora_support import write_list
from tests.integration.runtime_server.harness import free_port
from tests.integration.vllm.support import MAX_MODEL_LEN, SERVED, START_S, adapters_served, completion
from tests.paths import ROOT
from tests.processes import terminate
from tests.waiting import wait_for, wait_until_serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Vllm:
    """`hack/vllm-serve.sh MODEL ...` on a port of its own, restartable on the same port."""

    def __init__(self, checkpoint: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [
            "bash", str(ROOT / "hack" / "vllm-serve.sh"), str(checkpoint), "--served-model-name", SERVED,
            "--max-model-len", str(MAX_MODEL_LEN), "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1"}
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        wait_until_serving(f"{self.url}/health", self.process, self.log, timeout=START_S)

    def stop(self) -> None:
        terminate(self.process, grace_s=60)

    def models(self) -> dict[str, str]:
        return adapters_served(self.url)


class Sidecar:
    def __init__(self, engine_url: str, lora_list: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moe_runtime", "adapter-sync", "--engine", "vllm", "--engine-url", engine_url,
                 "--lora-list", str(lora_list), "--port", str(self.port), "--host", "127.0.0.1", "--interval", "0.5"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait_until_serving(f"{self.url}/health", self.process, log, timeout=60)

    def ready(self) -> tuple[int, dict]:
        answer = httpx.get(f"{self.url}/ready", timeout=5)
        return answer.status_code, answer.json()

    def series(self) -> dict[tuple[str, tuple], float]:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=30) == 0


def test_the_sidecar_keeps_a_real_vllm_servers_adapters_equal_to_the_list(
    dense_checkpoint, dense_adapters, tmp_path
):
    adapters = dense_adapters
    lora_list = tmp_path / "adapters.json"
    write_list(lora_list, {"sql": adapters["sql"]})
    engine = Vllm(dense_checkpoint, tmp_path / "vllm.log")
    sidecar = Sidecar(engine.url, lora_list, tmp_path / "sidecar.log")
    try:
        # no engine yet: not Ready, nothing reported loaded
        status, body = sidecar.ready()
        assert status == 503 and body["ready"] is False
        assert sidecar.series().get(("moe_runtime_lora_adapter_loaded", (("adapter", "sql"),))) in (None, 0.0)

        engine.start()
        wait_for(lambda: sidecar.ready()[0] == 200, timeout=60, what="the sidecar Ready once sql is loaded")
        assert engine.models() == {"sql": str(adapters["sql"])}
        assert sidecar.series()[("moe_runtime_lora_adapter_loaded", (("adapter", "sql"),))] == 1.0
        base, tuned = completion(engine.url), completion(engine.url, model="sql")
        assert base["status"] == tuned["status"] == 200, (base, tuned)
        assert tuned["body"]["choices"][0]["text"] != base["body"]["choices"][0]["text"], (
            "the adapter changes nothing"
        )

        # a second adapter, one the engine refuses (rank 16 above --max-lora-rank 8), and one that is not there
        write_list(lora_list, {**adapters, "ghost": tmp_path / "no-such-adapter"})
        wait_for(lambda: "chat" in engine.models(), timeout=60, what="chat loaded")

        def reported() -> dict | None:
            status, body = sidecar.ready()
            states = body["adapters"]
            done = status == 200 and states["wide"]["error"] and states["ghost"]["error"]
            return states if done else None

        states = wait_for(reported, timeout=60, what="both refusals reported, the sidecar still Ready")
        assert (states["wide"]["error"], states["ghost"]["error"]) == ("rank_above_max", "missing_files")
        assert states["sql"] == states["chat"] == {"loaded": True, "error": None}
        series = sidecar.series()
        assert (
            series[
                ("moe_runtime_lora_adapter_load_error", (("adapter", "wide"), ("reason", "rank_above_max")))
            ]
            == 1
        )
        assert (
            series[
                ("moe_runtime_lora_load_failures_total", (("adapter", "ghost"), ("reason", "missing_files")))
            ]
            >= 1
        )
        assert completion(engine.url, model="chat")["status"] == 200

        # sql leaves the list: unloaded, no longer served
        write_list(lora_list, {"chat": adapters["chat"]})
        wait_for(lambda: engine.models() == {"chat": str(adapters["chat"])}, timeout=60, what="sql unloaded")
        assert completion(engine.url, model="sql")["status"] == 404
        assert ("moe_runtime_lora_adapter_loaded", (("adapter", "sql"),)) not in sidecar.series()

        # the engine restarts (its adapters are gone): not Ready until they are loaded again
        engine.stop()
        wait_for(
            lambda: sidecar.ready()[0] == 503, timeout=30, what="the sidecar unready while the engine is down"
        )
        engine.start()
        wait_for(
            lambda: sidecar.ready()[0] == 200, timeout=60, what="the adapters loaded into the new engine"
        )
        assert engine.models() == {"chat": str(adapters["chat"])}
        assert completion(engine.url, model="chat")["status"] == 200
    finally:
        sidecar.stop()
        engine.stop()
    log = (tmp_path / "sidecar.log").read_text()
    assert "loaded adapter sql" in log and "unloaded adapter sql" in log and "Traceback" not in log, log[
        -3000:
    ]
