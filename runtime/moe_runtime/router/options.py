"""The options of `router`: each a flag and a MOE_RUNTIME_* environment variable (how the operator configures
the router's pods); a flag wins over its variable, an empty variable counts as unset.

| flag | environment variable | default | meaning |
|---|---|---|---|
| --model-deployment | MOE_RUNTIME_ROUTER_MODEL_DEPLOYMENT | (required) | the ModelDeployment whose pods it routes to |
| --namespace | MOE_RUNTIME_ROUTER_NAMESPACE | the pod's own (its ServiceAccount's namespace file) | its namespace |
| --stable-service | MOE_RUNTIME_ROUTER_STABLE_SERVICE | <model-deployment>-stable | the Service selecting the stable track's pods |
| --canary-service | MOE_RUNTIME_ROUTER_CANARY_SERVICE | <model-deployment>-canary | the Service selecting the canary's pods |
| --served-model-name | MOE_RUNTIME_SERVED_MODEL_NAME | none | the base model's name: any other `model` is a LoRA adapter |
| --strategy | MOE_RUNTIME_ROUTER_STRATEGY | PrefixAware | RoundRobin, LeastLoad or PrefixAware |
| --host | MOE_RUNTIME_HOST | 0.0.0.0 | listen address |
| --port | MOE_RUNTIME_PORT | 8000 | listen port |
| --scrape-interval | MOE_RUNTIME_ROUTER_SCRAPE_INTERVAL | 0.25 | seconds between two reads of each pod's load |
| --hold-timeout | MOE_RUNTIME_ROUTER_HOLD_TIMEOUT | 300 | seconds a request waits for a Ready pod before 503 |
| --max-held | MOE_RUNTIME_ROUTER_MAX_HELD | 1024 | requests held at once; more get 503 at once |
| --keepalive-interval | MOE_RUNTIME_ROUTER_KEEPALIVE_INTERVAL | 5 | seconds between SSE keep-alive comments to a held streaming request |
| --overload-tokens | MOE_RUNTIME_ROUTER_OVERLOAD_TOKENS | 2048 | PrefixAware: how much busier than the least loaded pod a pod holding the prefix may be |
| --prefix-block-chars | MOE_RUNTIME_ROUTER_PREFIX_BLOCK_CHARS | 256 | characters per prompt block of the prefix table |
| --read-timeout | MOE_RUNTIME_ROUTER_READ_TIMEOUT | 900 | seconds a pod's answer may pause (0: no limit) |
| --max-request-bytes | MOE_RUNTIME_MAX_REQUEST_BYTES | 16777216 | largest request body (413 above) |
| --endpoint-address-map | MOE_RUNTIME_ENDPOINT_ADDRESS_MAP | none | JSON file mapping pod `ip:port` to the address to dial (the local stack's pod network) |
| --log-level | MOE_RUNTIME_LOG_LEVEL | info | debug, info, warning, error |
| --log-format | MOE_RUNTIME_LOG_FORMAT | text | text or json |
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

from moe_runtime.router.picker import DEFAULT_OVERLOAD_TOKENS, Strategy

NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    return parse


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


# flag, variable, type, default, help
OPTIONS: tuple[tuple[str, str, object, object, str], ...] = (
    ("--model-deployment", "MOE_RUNTIME_ROUTER_MODEL_DEPLOYMENT", str, None, "the ModelDeployment it routes to"),
    ("--namespace", "MOE_RUNTIME_ROUTER_NAMESPACE", str, None, "its namespace (default: the pod's own)"),
    ("--stable-service", "MOE_RUNTIME_ROUTER_STABLE_SERVICE", str, None, "Service of the stable track's pods"),
    ("--canary-service", "MOE_RUNTIME_ROUTER_CANARY_SERVICE", str, None, "Service of the canary's pods"),
    ("--served-model-name", "MOE_RUNTIME_SERVED_MODEL_NAME", str, None, "the base model's name"),
    ("--strategy", "MOE_RUNTIME_ROUTER_STRATEGY", Strategy, Strategy.PREFIX_AWARE, "how a pod is picked"),
    ("--host", "MOE_RUNTIME_HOST", str, "0.0.0.0", "listen address"),
    ("--port", "MOE_RUNTIME_PORT", int, 8000, "listen port"),
    ("--scrape-interval", "MOE_RUNTIME_ROUTER_SCRAPE_INTERVAL", _positive(float), 0.25, "seconds between load reads"),
    ("--hold-timeout", "MOE_RUNTIME_ROUTER_HOLD_TIMEOUT", _non_negative, 300.0, "seconds a request waits for a pod"),
    ("--max-held", "MOE_RUNTIME_ROUTER_MAX_HELD", _positive(int), 1024, "requests held at once"),
    ("--keepalive-interval", "MOE_RUNTIME_ROUTER_KEEPALIVE_INTERVAL", _positive(float), 5.0, "SSE keep-alive period"),
    ("--overload-tokens", "MOE_RUNTIME_ROUTER_OVERLOAD_TOKENS", _non_negative, float(DEFAULT_OVERLOAD_TOKENS),
     "PrefixAware: extra load a pod holding the prefix may carry"),
    ("--prefix-block-chars", "MOE_RUNTIME_ROUTER_PREFIX_BLOCK_CHARS", _positive(int), 256, "characters per block"),
    ("--read-timeout", "MOE_RUNTIME_ROUTER_READ_TIMEOUT", _non_negative, 900.0, "seconds an answer may pause (0: none)"),
    ("--max-request-bytes", "MOE_RUNTIME_MAX_REQUEST_BYTES", _positive(int), 16 * 1024 * 1024, "largest body"),
    ("--endpoint-address-map", "MOE_RUNTIME_ENDPOINT_ADDRESS_MAP", str, None, "pod ip:port -> address to dial"),
    ("--log-level", "MOE_RUNTIME_LOG_LEVEL", str, "info", "debug, info, warning, error"),
    ("--log-format", "MOE_RUNTIME_LOG_FORMAT", str, "text", "text or json"),
)  # fmt: skip


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m moe_runtime router", description=__doc__.splitlines()[0])
    for flag, env, kind, _, text in OPTIONS:
        parser.add_argument(flag, type=kind, default=None, help=f"{text} [env {env}]")
    args = parser.parse_args(argv)
    for flag, env, kind, default, _ in OPTIONS:
        dest = flag.removeprefix("--").replace("-", "_")
        if getattr(args, dest) is None:
            raw = environ.get(env) or None
            try:
                setattr(args, dest, kind(raw) if raw is not None else default)
            except (argparse.ArgumentTypeError, ValueError) as err:
                parser.error(f"{env}={raw!r}: {err}")
    if not args.model_deployment:
        parser.error("--model-deployment (or MOE_RUNTIME_ROUTER_MODEL_DEPLOYMENT) is required")
    if args.namespace is None:
        try:
            with open(NAMESPACE_FILE) as namespace:
                args.namespace = namespace.read().strip()
        except OSError:
            parser.error("--namespace is required outside a pod")
    args.stable_service = args.stable_service or f"{args.model_deployment}-stable"
    args.canary_service = args.canary_service or f"{args.model_deployment}-canary"
    return args
