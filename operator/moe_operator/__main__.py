"""Command line: `python -m moe_operator run [--namespace NS ... | --all-namespaces] [options]`."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys

import kopf

from moe_operator.decisions.images import EngineImages, default_images
from moe_operator.machinery.leader import LeaseTimings
from moe_operator.manager import Options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="moe_operator", description="The moedeploy ModelDeployment operator."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="reconcile ModelDeployments until stopped (SIGINT/SIGTERM)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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
    run.add_argument("--workers", type=int, default=8, help="ModelDeployments reconciled at once")
    prometheus = run.add_argument_group(
        "Prometheus (queue depth for autoscaling, latency for canary analysis)"
    )
    prometheus.add_argument(
        "--prometheus-url", default=env("MOE_OPERATOR_PROMETHEUS_URL"), help="env MOE_OPERATOR_PROMETHEUS_URL"
    )
    prometheus.add_argument(
        "--prometheus-bearer-token-file",
        default=env("MOE_OPERATOR_PROMETHEUS_BEARER_TOKEN_FILE"),
        help="a token sent as `Authorization: Bearer`, re-read on every query (it may rotate)",
    )
    prometheus.add_argument(
        "--prometheus-ca-file", default=env("MOE_OPERATOR_PROMETHEUS_CA_FILE"), help="CA bundle for https"
    )
    prometheus.add_argument(
        "--prometheus-insecure-skip-verify", action="store_true", help="do not verify the TLS certificate"
    )
    run.add_argument(
        "--policy-file",
        default=env("MOE_OPERATOR_POLICY_FILE"),
        help="the operator policy (YAML; see the chart's values `operator.policy`); default: the safe built-in policy",
    )
    run.add_argument(
        "--engine-image",
        action="append",
        default=[],
        metavar="ENGINE=IMAGE",
        help="the image of an engine's pods when a spec names none (repeatable; default: "
        + ", ".join(f"{engine}={image}" for engine, image in default_images(_version()).items())
        + "); the moe-runtime image also runs the download and adapter-sync helpers of other engines' pods",
    )
    election = run.add_argument_group(
        "leader election (one replica reconciles, the others wait to take over)"
    )
    election.add_argument("--leader-elect", action="store_true", help="elect a leader through a Lease")
    election.add_argument(
        "--leader-election-namespace", help="namespace of the Lease (default: the pod's own)"
    )
    election.add_argument("--leader-election-id", default="moe-operator", help="name of the Lease")
    election.add_argument(
        "--leader-election-lease-duration",
        type=float,
        default=15.0,
        help="seconds a candidate waits on an unrenewed Lease",
    )
    election.add_argument(
        "--leader-election-renew-deadline",
        type=float,
        default=10.0,
        help="seconds the leader tries to renew before it stops",
    )
    election.add_argument(
        "--leader-election-retry-period", type=float, default=2.0, help="seconds between tries"
    )
    run.add_argument(
        "--metrics-port", type=int, help="serve the operator's own Prometheus metrics on this port"
    )
    run.add_argument(
        "--relist-seconds",
        type=float,
        default=300.0,
        help="list every watched kind afresh this often: after a watch gap kopf reports nothing of what was "
        "deleted meanwhile",
    )
    run.add_argument(
        "--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    run.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        EngineImages().with_overrides(args.engine_image)
    except ValueError as err:
        run.error(f"--engine-image {err}")
    return args


def options(args: argparse.Namespace):
    return Options(
        namespaces=tuple(args.namespaces),
        workers=args.workers,
        prometheus_url=args.prometheus_url,
        prometheus_bearer_token_file=args.prometheus_bearer_token_file,
        prometheus_ca_file=args.prometheus_ca_file,
        prometheus_insecure_skip_verify=args.prometheus_insecure_skip_verify,
        policy_file=args.policy_file,
        leader_elect=args.leader_elect,
        leader_election_namespace=args.leader_election_namespace,
        leader_election_id=args.leader_election_id,
        leader_election_timings=LeaseTimings(
            args.leader_election_lease_duration,
            args.leader_election_renew_deadline,
            args.leader_election_retry_period,
        ),
        metrics_port=args.metrics_port,
        relist_seconds=args.relist_seconds,
        images=EngineImages(default_images(_version())).with_overrides(args.engine_image),
    )


def _version() -> str:
    try:
        return importlib.metadata.version("moedeploy")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing
        return "latest"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose)
    if not args.verbose:  # kopf logs every watch event it hands over; the operator logs what it does
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    import moe_operator.handlers  # noqa: F401 - registers the handlers with kopf

    kopf.run(
        namespaces=args.namespaces,
        clusterwide=not args.namespaces,
        standalone=True,  # no kopf peering: leader election decides who reconciles
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(options=options(args)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
