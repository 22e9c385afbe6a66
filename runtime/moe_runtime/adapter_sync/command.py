"""`python -m moe_runtime adapter-sync --engine vllm --engine-url http://127.0.0.1:8000 --lora-list FILE`.

Runs rounds (sync.py) every --interval seconds until SIGTERM/SIGINT, and serves /health, /ready and /metrics on
--host:--port (MOE_RUNTIME_HOST / MOE_RUNTIME_PORT, as `serve` reads them).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from moe_runtime.adapter_sync.engine_api import EngineApi
from moe_runtime.adapter_sync.server import make_server
from moe_runtime.adapter_sync.sync import Syncer
from moe_runtime.logs import configure

log = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m moe_runtime adapter-sync",
        description="Keep a vLLM or SGLang server's LoRA adapters equal to an adapter list file.",
    )
    parser.add_argument("--engine", required=True, choices=["vllm", "sglang"])
    parser.add_argument(
        "--engine-url", required=True, help="the engine's HTTP API, e.g. http://127.0.0.1:8000"
    )
    parser.add_argument("--lora-list", required=True, help='JSON list of {"name", "path"} (watched)')
    parser.add_argument("--host", default=env("MOE_RUNTIME_HOST", "0.0.0.0"), help="[env MOE_RUNTIME_HOST]")
    parser.add_argument(
        "--port", type=int, default=int(env("MOE_RUNTIME_PORT", "8001")), help="[env MOE_RUNTIME_PORT]"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two rounds")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    configure(args.log_level, "text")
    syncer = Syncer(EngineApi(args.engine_url, args.engine), args.lora_list)
    server = make_server(args.host, args.port, syncer)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("adapter-sync for %s at %s, list %s, on %s:%d", args.engine, args.engine_url, args.lora_list,
             args.host, server.server_address[1])  # fmt: skip
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        try:
            syncer.round()
        except Exception:  # the sidecar must outlive anything the engine or the file can do
            log.exception("adapter-sync round")
        stop.wait(args.interval)
    server.shutdown()
    return 0
