"""`python -m moe_runtime router`: watch the ModelDeployment's endpoints and status, read its pods' load, and
route every request (options: router/options.py).

Lifecycle: /health answers at once; /ready answers 200 once the EndpointSlices were listed (with no pod Ready
too: it then holds requests). On SIGTERM or SIGINT it drains as the runtime does:
/ready turns 503, idle keep-alive connections close, answers carry `Connection: close`, the requests it
accepted (held ones included) are answered, then it exits 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import uvicorn

from moe_runtime import logs
from moe_runtime.draining import CloseWhenDraining, close_connections
from moe_runtime.router.addresses import AddressMap
from moe_runtime.router.app import Limits, RouterApp
from moe_runtime.router.discovery import Discovery
from moe_runtime.router.kube import api_client
from moe_runtime.router.metrics import RouterMetrics
from moe_runtime.router.options import parse_args
from moe_runtime.router.picker import Picker
from moe_runtime.router.prefix import PrefixTable
from moe_runtime.router.scraper import LoadScraper
from moe_runtime.router.state import RouterState
from moe_runtime.router.tracks import CANARY, STABLE

log = logging.getLogger("moe_runtime.router.command")

DRAIN_POLL_S = 0.05


class _RouterServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: RouterApp) -> None:
        super().__init__(config)
        self.router = app
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if self.draining or self.loop is None:
            self.should_exit = True
            return
        log.info("received %s: draining", signal.Signals(sig).name)
        self.draining = True
        self.loop.call_soon_threadsafe(close_connections, self)
        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._exit_when_idle()))

    async def _exit_when_idle(self) -> None:
        while self.router.in_flight > 0:
            await asyncio.sleep(DRAIN_POLL_S)
        self.should_exit = True


async def serve(args) -> int:
    metrics = RouterMetrics()
    state = RouterState(
        Picker(args.strategy, overload_tokens=args.overload_tokens),
        metrics,
        served_model=args.served_model_name,
        prefix_table=PrefixTable(),
        block_chars=args.prefix_block_chars,
    )
    loop = asyncio.get_running_loop()
    discovery: Discovery | None = None

    def refresh() -> None:
        state.update(discovery.endpoints(), discovery.status())

    discovery = Discovery(
        api_client(),
        args.namespace,
        args.model_deployment,
        {args.stable_service: STABLE, args.canary_service: CANARY},
        on_change=lambda: loop.call_soon_threadsafe(refresh),
    )
    addresses = AddressMap(args.endpoint_address_map)
    limits = Limits(
        hold_timeout_s=args.hold_timeout,
        max_held=args.max_held,
        keepalive_s=args.keepalive_interval,
        max_request_bytes=args.max_request_bytes,
        read_timeout_s=args.read_timeout or None,
    )
    server: _RouterServer | None = None

    def ready() -> bool:
        # the ModelDeployment's status is not waited for: until it is read, the Ready pods decide the tracks
        return discovery.slices_synced.is_set() and server is not None and not server.draining

    app = RouterApp(state, metrics, addresses, limits, ready)
    config = uvicorn.Config(
        CloseWhenDraining(app, draining=lambda: server is not None and server.draining),
        host=args.host, port=args.port, log_level=args.log_level, access_log=False, log_config=None,
        lifespan="on", timeout_graceful_shutdown=5,
    )  # fmt: skip
    server = _RouterServer(config, app)
    server.loop = loop
    discovery.start()
    scraper = asyncio.create_task(LoadScraper(state, addresses, metrics, args.scrape_interval).run())
    log.info(
        "routing %s/%s (%s; services %s, %s)",
        args.namespace, args.model_deployment, args.strategy, args.stable_service, args.canary_service,
    )  # fmt: skip
    try:
        await server.serve()
    finally:
        scraper.cancel()
        discovery.stop()
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv, os.environ)
    logs.configure(args.log_level, args.log_format)
    return asyncio.run(serve(args))
