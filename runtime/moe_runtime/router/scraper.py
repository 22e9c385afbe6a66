"""Reads every Ready pod's load from its /metrics at a fraction of a second's interval (the Inference
Extension's endpoint picker reads them every 50 ms by default), asking for those families only (`name[]`, which
our runtime and vLLM's prometheus_client handler honour: a whole exposition costs the pod milliseconds). A pod
that does not answer in time has no known load until it does; the router's own count of its requests still
counts."""

from __future__ import annotations

import asyncio
import logging

import httpx

from moe_runtime.router.addresses import AddressMap
from moe_runtime.router.load import WANTED, NotMetrics, parse_load
from moe_runtime.router.metrics import RouterMetrics
from moe_runtime.router.state import RouterState

log = logging.getLogger("moe_runtime.router.scraper")


class LoadScraper:
    def __init__(
        self, state: RouterState, addresses: AddressMap, metrics: RouterMetrics, interval_s: float
    ) -> None:
        self.state, self.addresses, self.metrics, self.interval_s = state, addresses, metrics, interval_s
        timeout = max(0.2, min(2.0, 4 * interval_s))
        self._client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=64))

    async def run(self) -> None:
        try:
            while True:
                ready = [e for e in self.state.endpoints.values() if e.ready]
                await asyncio.gather(*(self._scrape(e.address) for e in ready))
                await asyncio.sleep(self.interval_s)
        finally:
            await self._client.aclose()

    async def _scrape(self, address: str) -> None:
        try:
            response = await self._client.get(
                f"http://{self.addresses.dial(address)}/metrics", params=[("name[]", name) for name in WANTED]
            )
            response.raise_for_status()
            load = parse_load(response.text)
        except (httpx.HTTPError, NotMetrics) as err:
            self.metrics.scrape_errors.inc()
            log.debug("load of %s unknown: %s", address, err)
            self.state.loads.pop(address, None)
            return
        if address in self.state.endpoints:
            self.state.loads[address] = load
