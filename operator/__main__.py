"""Command line: `python -m moe_operator run [--namespace NS ... | --all-namespaces] [--prometheus-url URL]`."""

from __future__ import annotations

import argparse
import os
import random
import sys

import kopf


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="moe_operator", description="The moedeploy ModelDeployment operator."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="reconcile ModelDeployments until stopped (SIGINT/SIGTERM)")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=[],
        metavar="NS",
        help="serve this namespace; repeat for more (default: all namespaces)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="serve every namespace (the default)"
    )
    run.add_argument(
        "--prometheus-url",
        default=os.environ.get("MOE_OPERATOR_PROMETHEUS_URL"),
        help="Prometheus that scrapes the runtime pods (env MOE_OPERATOR_PROMETHEUS_URL)",
    )
    peering = run.add_mutually_exclusive_group()
    peering.add_argument("--standalone", action="store_true", help="run without kopf peering (the default)")
    peering.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate with other operator replicas through this kopf peering object (its CRD must exist)",
    )
    run.add_argument(
        "--priority",
        type=int,
        help="peering priority; the highest one serves (default: random, so replicas of one Deployment differ:"
        " kopf pauses every operator that shares the top priority with another)",
    )
    run.add_argument(
        "--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    run.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def peering_priority(requested: int | None) -> int:
    return requested if requested is not None else random.SystemRandom().randint(1, 2**31 - 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose)
    import moe_operator.handlers  # noqa: F401 - registers the handlers with kopf

    kopf.run(
        namespaces=args.namespaces,
        clusterwide=not args.namespaces,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=peering_priority(args.priority),
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(prometheus_url=args.prometheus_url, namespaces=args.namespaces),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
