"""`python hack/localservices --kubeconfig ... --state-dir ...`: the Service proxy until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kubernetes import config  # noqa: E402

from localservices.proxy import ServiceProxy  # noqa: E402
from moe_runtime.router.addresses import AddressMap  # noqa: E402
from moe_runtime.router.kube import ListWatch  # noqa: E402

SERVICES = "/api/v1/services"
ENDPOINT_SLICES = "/apis/discovery.k8s.io/v1/endpointslices"


def _key(obj: dict) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


async def run(kubeconfig: Path, state_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    api = config.new_client_from_config(config_file=str(kubeconfig))
    addresses = AddressMap(str(state_dir / "pod-addresses.json"))
    proxy = ServiceProxy(state_dir / "services.json", addresses.dial)
    changed = asyncio.Event()

    def listed(store: dict):
        def on_sync(items: list[dict]) -> None:
            def apply() -> None:
                store.clear()
                store.update({_key(item): item for item in items})
                changed.set()

            loop.call_soon_threadsafe(apply)

        return on_sync

    def evented(store: dict):
        def on_event(kind: str, item: dict) -> None:
            def apply() -> None:
                if kind == "DELETED":
                    store.pop(_key(item), None)
                else:
                    store[_key(item)] = item
                changed.set()

            loop.call_soon_threadsafe(apply)

        return on_event

    watches = [
        ListWatch(
            api, SERVICES, {}, listed(proxy.services), evented(proxy.services), "watch-services"
        ).start(),
        ListWatch(
            api, ENDPOINT_SLICES, {}, listed(proxy.slices), evented(proxy.slices), "watch-endpointslices"
        ).start(),
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            waiter = asyncio.ensure_future(changed.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            changed.clear()
            await proxy.sync()
    finally:
        for watch in watches:
            watch.stop()
        proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localservices", description="The local stack's Service proxy")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True, help="services.json goes here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args.kubeconfig, args.state_dir.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
