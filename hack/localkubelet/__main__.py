"""`python hack/localkubelet ...`: run the local kubelet until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localkubelet.api import Api  # noqa: E402
from localkubelet.kubelet import Kubelet, Settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="localkubelet", description="Runs the pods of the given nodes locally"
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--nodes", default="", help="comma-separated names of the nodes this kubelet serves")
    parser.add_argument("--state-dir", type=Path, required=True, help="pods/ (logs, volumes) go here")
    parser.add_argument(
        "--targets", type=Path, help="Prometheus file_sd file (default <state-dir>/targets.json)"
    )
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0)
    parser.add_argument("--backoff-initial-seconds", type=float, default=10.0)
    parser.add_argument("--backoff-cap-seconds", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        nodes=tuple(n for n in args.nodes.split(",") if n),
        state_dir=args.state_dir.resolve(),
        targets_file=(args.targets or args.state_dir / "targets.json").resolve(),
        heartbeat_s=args.heartbeat_seconds,
        backoff_initial_s=args.backoff_initial_seconds,
        backoff_cap_s=args.backoff_cap_seconds,
    )
    kubelet = Kubelet(Api(args.kubeconfig), settings)
    signal.signal(signal.SIGTERM, kubelet.stop)
    signal.signal(signal.SIGINT, kubelet.stop)
    logging.getLogger("localkubelet").info("serving nodes %s", ", ".join(settings.nodes) or "(none)")
    kubelet.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
