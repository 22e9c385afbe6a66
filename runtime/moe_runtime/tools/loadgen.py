"""`python -m moe_runtime loadgen`: load on runtime pods over the OpenAI completions API, and a JSON summary.

Where requests go, as clients in a cluster send them by default: `--model-deployment NAME [--namespace NS]`
alone sends them to the ModelDeployment's `status.url` (read through the API with the current kubeconfig), which
is the router's Service with spec.routing and the plain Service without, reached through the local stack's
Service proxy (`--services`, default `.cluster/services.json`, re-read when it changes); `--service-url URL`
names such an in-cluster URL directly. Or, bypassing Services: `--url` (repeatable; taken in turn), or
`--targets .cluster/targets.json --model-deployment NAME`: the Ready pods as the local kubelet lists them, taken
in turn. Connections are kept alive and reused, as HTTP clients do (through a plain Service each stays with the
pod kube-proxy picked for it). Answers that name their pod (the router's `x-moedeploy-pod`) are counted per pod.

How they come: closed loop (`--concurrency N` clients, each sending its next request when the last one is
answered) or open loop (`--rate R` requests per second, Poisson arrivals, at most `--concurrency` in flight;
arrivals beyond that are dropped and counted). It ends after `--duration` seconds or `--requests` requests,
whichever comes first (one of them is required), or on SIGINT/SIGTERM: no new requests, the ones in flight
finish (a second signal abandons them), and the summary so far is printed. Every request streams, so that
the time to first token is measured; prompt and output lengths come from
`--mix PROMPT_WORDS:MAX_TOKENS[:WEIGHT[:SHARED_PREFIXES]]` (with SHARED_PREFIXES, prompts start with one of that
many fixed prefixes, as requests sharing a system prompt do).

Loopback only: it refuses any other host. As a library:

    summary = run_load(LoadConfig(urls=("http://127.0.0.1:8000",), requests=20))
    with LoadGenerator(config).background() as load:   # in a thread until the block ends
        ...
    load.result
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import math
import os
import random
import re
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

MAX_CONCURRENCY = 1024
MAX_RATE = 1000.0
MAX_DURATION_S = 24 * 3600.0
MAX_REQUESTS = 10_000_000
MAX_TIMEOUT_S = 3600.0
NO_TARGET_WAIT_S = 0.1
DEFAULT_SERVICES_FILE = Path(".cluster/services.json")
POD_HEADER = "x-moedeploy-pod"
PERCENTILES = (50, 90, 99)
WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "experts", "route",
    "tokens", "to", "few", "that", "know", "best", "and", "scheduler", "batches", "short", "prompts",
    "ahead", "of", "long", "ones", "on", "busy", "machine",
)  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """One kind of request in the mix: prompt length in words, output limit in tokens, relative weight, and
    `prefixes`: when above 0, the prompt starts with one of that many fixed prefixes (all but its last
    PREFIX_TAIL_WORDS words, shared by the requests that drew the same one, as a system prompt is), the rest
    random."""

    prompt_words: int
    max_tokens: int
    weight: float = 1.0
    prefixes: int = 0


PREFIX_TAIL_WORDS = 8


def parse_mix(text: str) -> tuple[Shape, ...]:
    """`32:16:3,512:64:1:4` -> shapes; ValueError naming the bad entry."""
    shapes = []
    for entry in (part.strip() for part in text.split(",")):
        parts = entry.split(":")
        try:
            if len(parts) not in (2, 3, 4):
                raise ValueError
            weight = float(parts[2]) if len(parts) >= 3 else 1.0
            shape = Shape(int(parts[0]), int(parts[1]), weight, int(parts[3]) if len(parts) == 4 else 0)
        except ValueError:
            raise ValueError(
                f"--mix entry {entry!r}: want PROMPT_WORDS:MAX_TOKENS[:WEIGHT[:SHARED_PREFIXES]]"
            ) from None
        if shape.prompt_words < 1 or shape.max_tokens < 1 or not shape.weight > 0 or shape.prefixes < 0:
            raise ValueError(f"--mix entry {entry!r}: lengths must be at least 1 and the weight positive")
        shapes.append(shape)
    return tuple(shapes)


def prompt(shape: Shape, rng: random.Random) -> str:
    if not shape.prefixes:
        return " ".join(rng.choice(WORDS) for _ in range(shape.prompt_words))
    fixed = max(0, shape.prompt_words - PREFIX_TAIL_WORDS)
    prefix_rng = random.Random(f"{shape.prompt_words}:{rng.randrange(shape.prefixes)}")
    head = [prefix_rng.choice(WORDS) for _ in range(fixed)]
    return " ".join([*head, *(rng.choice(WORDS) for _ in range(shape.prompt_words - fixed))])


@dataclass(frozen=True)
class LoadConfig:
    urls: tuple[str, ...] = ()
    targets_file: Path | None = None
    service_url: str | None = None  # an in-cluster URL (status.url), reached through `services_file`
    services_file: Path = DEFAULT_SERVICES_FILE
    model_deployment: str | None = None
    namespace: str | None = None
    concurrency: int = 4
    rate: float | None = None
    duration_s: float | None = None
    requests: int | None = None
    mix: tuple[Shape, ...] = (Shape(32, 16),)
    timeout_s: float = 60.0
    model: str | None = None
    temperature: float = 1.0
    seed: int = 0
    ignore_eos: bool = False  # every request generates exactly its max_tokens (vLLM's field)
    # times a request is sent again when its connection failed before any answer came (as the OpenAI SDK does,
    # max_retries 2): a refused or reset connection, nothing streamed
    retries: int = 0

    def check(self) -> None:
        """ValueError naming the setting that is out of bounds."""
        if [bool(self.urls), self.targets_file is not None, self.service_url is not None].count(True) != 1:
            raise ValueError(
                "give one of --model-deployment (its status.url), --service-url, --url or --targets"
            )
        if self.targets_file is not None and not self.model_deployment:
            raise ValueError("--targets needs --model-deployment")
        if self.service_url is not None:
            service_key(self.service_url)
        for url in self.urls:
            require_loopback(url)
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"--concurrency must be 1..{MAX_CONCURRENCY}")
        if self.rate is not None and not 0 < self.rate <= MAX_RATE:
            raise ValueError(f"--rate must be in (0, {MAX_RATE:g}]")
        if self.duration_s is None and self.requests is None:
            raise ValueError("give --duration or --requests (or both): the load must end")
        if self.duration_s is not None and not 0 < self.duration_s <= MAX_DURATION_S:
            raise ValueError(f"--duration must be in (0, {MAX_DURATION_S:g}] seconds")
        if self.requests is not None and not 1 <= self.requests <= MAX_REQUESTS:
            raise ValueError(f"--requests must be 1..{MAX_REQUESTS}")
        if not 0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise ValueError(f"--timeout must be in (0, {MAX_TIMEOUT_S:g}] seconds")
        if not self.mix:
            raise ValueError("--mix needs at least one shape")
        if not 0 <= self.retries <= 10:
            raise ValueError("--retries must be 0..10")


def require_loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if urlsplit(url).scheme not in ("http", "https") or not loopback:
        raise ValueError(f"{url!r}: the load generator only talks to http(s) on loopback")
    return url.rstrip("/")


def targets_from(entries: Any, model_deployment: str, namespace: str | None) -> list[str]:
    """Base URLs of one ModelDeployment's pods in a file_sd list (loopback entries only)."""
    urls = []
    for entry in entries if isinstance(entries, list) else ():
        labels = entry.get("labels") or {}
        if labels.get("model_deployment") != model_deployment:
            continue
        if namespace is not None and labels.get("namespace") != namespace:
            continue
        for target in entry.get("targets") or ():
            with contextlib.suppress(ValueError):
                urls.append(require_loopback(f"http://{target}"))
    return urls


def service_key(url: str) -> str:
    """`namespace/name` of an in-cluster Service URL (http://name.namespace.svc.cluster.local[:port])."""
    host = urlsplit(url).hostname or ""
    parts = host.split(".")
    if urlsplit(url).scheme != "http" or len(parts) < 3 or parts[2] != "svc":
        raise ValueError(f"{url!r}: not an in-cluster Service URL (http://<name>.<namespace>.svc...)")
    return f"{parts[1]}/{parts[0]}"


def service_address(services: Any, url: str) -> list[str]:
    """The loopback URL the Service proxy gives an in-cluster URL (none while it has no port for it)."""
    address = services.get(service_key(url)) if isinstance(services, dict) else None
    if not isinstance(address, str):
        return []
    try:
        return [require_loopback(f"http://{address}")]
    except ValueError:
        return []


def status_url(model_deployment: str, namespace: str | None) -> str:
    """A ModelDeployment's status.url, read with the current kubeconfig; ValueError while it has none."""
    from kubernetes import client, config  # only for this mode

    api = config.new_client_from_config()
    context_namespace = config.list_kube_config_contexts()[1]["context"].get("namespace", "default")
    found = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "moedeploy.dev", "v1alpha1", namespace or context_namespace, "modeldeployments", model_deployment
    )
    url = (found.get("status") or {}).get("url")
    if not url:
        raise ValueError(f"ModelDeployment {model_deployment} has no status.url yet")
    return url


class Endpoints:
    """Where the next request goes: fixed URLs, a targets file re-read whenever it changes (in turn), or the
    Service proxy's address of a Service URL."""

    def __init__(self, config: LoadConfig) -> None:
        self._config = config
        self._urls = [require_loopback(url) for url in config.urls]
        self._seen: tuple[int, int, int] | None = None
        self._turn = 0

    def next(self) -> str | None:
        if self._config.targets_file is not None:
            self._reload(self._config.targets_file)
        elif self._config.service_url is not None:
            self._reload(self._config.services_file)
        if not self._urls:
            return None
        self._turn += 1
        return self._urls[self._turn % len(self._urls)]

    def _reload(self, path: Path) -> None:
        try:
            info = os.stat(path)
        except OSError:
            self._urls, self._seen = [], None
            return
        version = (info.st_ino, info.st_mtime_ns, info.st_size)
        if version == self._seen:
            return
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # keep the last good list; the writer replaces the file whole
        self._seen = version
        if self._config.service_url is not None:
            self._urls = service_address(entries, self._config.service_url)
        else:
            self._urls = targets_from(entries, self._config.model_deployment or "", self._config.namespace)


@dataclass(frozen=True)
class Outcome:
    url: str
    error: str | None  # None: a complete answer; else the HTTP status or what broke
    latency_s: float
    ttft_s: float | None
    output_tokens: int
    pod: str | None = None  # the pod that answered, when the answer names it (the router's header)

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (vLLM's TPOT); None with fewer than two tokens."""
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """mean, population standard deviation, p50/p90/p99 (linear interpolation between ranks) and max; None
    without values."""
    if not values:
        return None
    ordered = sorted(values)
    out = {"mean": sum(ordered) / len(ordered), "stdev": statistics.pstdev(ordered)}
    for p in PERCENTILES:
        rank = (len(ordered) - 1) * p / 100
        low, high = math.floor(rank), math.ceil(rank)
        out[f"p{p}"] = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    out["max"] = ordered[-1]
    return {key: round(value, 4) for key, value in out.items()}


def summarize(
    outcomes: Sequence[Outcome], issued: int, dropped: int, no_target_waits: int, elapsed_s: float
) -> dict:
    done = [o for o in outcomes if o.error is None]
    tokens = sum(o.output_tokens for o in done)
    elapsed = max(elapsed_s, 1e-9)
    return {
        "requests": issued,
        "completed": len(done),
        "errors": dict(sorted(Counter(o.error for o in outcomes if o.error is not None).items())),
        "in_flight": issued - len(outcomes),
        "dropped": dropped,
        "no_target_waits": no_target_waits,
        "duration_s": round(elapsed_s, 3),
        "requests_per_s": round(len(done) / elapsed, 3),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / elapsed, 3),
        "latency_s": percentiles([o.latency_s for o in done]),
        "ttft_s": percentiles([o.ttft_s for o in done if o.ttft_s is not None]),
        "tpot_s": percentiles([o.tpot_s for o in done if o.tpot_s is not None]),
        "by_target": dict(sorted(Counter(o.url for o in outcomes).items())),
        "by_pod": dict(sorted(Counter(o.pod for o in outcomes if o.pod).items())),
        "errors_by_target": dict(sorted(Counter(o.url for o in outcomes if o.error is not None).items())),
    }


@dataclass
class LoadGenerator:
    config: LoadConfig
    result: dict | None = None
    _outcomes: list[Outcome] = field(default_factory=list)
    _issued: int = 0
    _dropped: int = 0
    _no_target_waits: int = 0
    _retried: int = 0
    _started: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None

    def __post_init__(self) -> None:
        self.config.check()
        self._rng = random.Random(self.config.seed)
        self._endpoints = Endpoints(self.config)

    # ---- control -----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """No new requests; the ones in flight finish. Safe from any thread or a signal handler."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def abandon(self) -> None:
        """Stop, and cancel the requests in flight (they count as errors `abandoned`)."""
        self.stop()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: [task.cancel() for task in list(self._tasks)])

    def summary(self) -> dict:
        """The figures so far (or final, once run() returned)."""
        elapsed = 0.0 if self._started is None else time.perf_counter() - self._started
        return {
            **summarize(list(self._outcomes), self._issued, self._dropped, self._no_target_waits, elapsed),
            "retried": self._retried,
            "config": _config_json(self.config),
        }

    @contextlib.contextmanager
    def background(self) -> Iterator[LoadGenerator]:
        """Runs in a thread while the block runs; then stops it, waits for it, and leaves `result`."""
        thread = threading.Thread(target=lambda: asyncio.run(self.run()), name="loadgen", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop()
            thread.join(timeout=self.config.timeout_s + 30)

    # ---- running -----------------------------------------------------------------------------------------

    async def run(self) -> dict:
        self._loop = asyncio.get_running_loop()
        self._started = time.perf_counter()
        limits = httpx.Limits(
            max_connections=self.config.concurrency, max_keepalive_connections=self.config.concurrency
        )
        async with httpx.AsyncClient(limits=limits, timeout=self.config.timeout_s) as client:
            if self.config.rate is None:
                await asyncio.gather(*(self._client_loop(client) for _ in range(self.config.concurrency)))
            else:
                await self._arrivals(client)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        self.result = self.summary()
        return self.result

    def _may_send(self) -> bool:
        assert self._started is not None
        if self._stop.is_set():
            return False
        if self.config.requests is not None and self._issued >= self.config.requests:
            return False
        return self.config.duration_s is None or time.perf_counter() - self._started < self.config.duration_s

    async def _client_loop(self, client: httpx.AsyncClient) -> None:
        while self._may_send():
            url = self._endpoints.next()
            if url is None:
                self._no_target_waits += 1
                await asyncio.sleep(NO_TARGET_WAIT_S)
                continue
            self._issued += 1
            task = asyncio.ensure_future(self._request(client, url))
            self._tasks.add(task)
            try:
                await task
            finally:
                self._tasks.discard(task)

    async def _arrivals(self, client: httpx.AsyncClient) -> None:
        assert self.config.rate is not None and self._started is not None
        next_at = time.perf_counter()
        while True:
            next_at += self._rng.expovariate(self.config.rate)
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            if not self._may_send():
                return
            url = self._endpoints.next()
            if url is None:
                self._no_target_waits += 1
                continue
            if len(self._tasks) >= self.config.concurrency:
                self._dropped += 1
                continue
            self._issued += 1
            task = asyncio.ensure_future(self._request(client, url))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _request(self, client: httpx.AsyncClient, url: str) -> None:
        shape = self._rng.choices(self.config.mix, weights=[s.weight for s in self.config.mix])[0]
        body: dict[str, Any] = {
            "prompt": prompt(shape, self._rng),
            "max_tokens": shape.max_tokens,
            "temperature": self.config.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.config.ignore_eos:
            body["ignore_eos"] = True
        if self.config.model:
            body["model"] = self.config.model
        start = time.perf_counter()
        for attempt in range(self.config.retries + 1):
            outcome = await self._send(client, url, body, start)
            if outcome is not None or attempt == self.config.retries:
                break
            url = self._endpoints.next() or url
            self._retried += 1
        self._outcomes.append(
            outcome or Outcome(url, "connection_lost", time.perf_counter() - start, None, 0)
        )

    async def _send(self, client: httpx.AsyncClient, url: str, body: dict, start: float) -> Outcome | None:
        """One try; None when the connection failed before any answer came (a retry cannot do harm)."""
        ttft, tokens, error, pod = None, 0, None, None
        answered = False
        try:
            async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
                answered = True
                pod = response.headers.get(POD_HEADER)
                if response.status_code != 200:
                    await response.aread()
                    error = str(response.status_code)
                else:
                    async for line in _event_lines(response):
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        if "error" in event:
                            error = f"stream_{event['error'].get('code') or event['error'].get('type') or 'error'}"
                        choices = event.get("choices") or ()
                        if ttft is None and choices and choices[0].get("text"):
                            ttft = time.perf_counter() - start
                        if event.get("usage"):
                            tokens = event["usage"].get("completion_tokens", 0)
        except asyncio.CancelledError:
            error = "abandoned"
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.ConnectError:
            if self.config.retries:
                return None
            error = "connect_error"
        except (httpx.HTTPError, ValueError) as err:
            if not answered and isinstance(err, httpx.TransportError) and self.config.retries:
                return None
            error = type(err).__name__
        return Outcome(url, error, time.perf_counter() - start, ttft, tokens, pod)


_EVENT_LINE_END = re.compile(r"\r\n|\r|\n")


def split_event_lines(buffer: str) -> tuple[list[str], str]:
    """The complete lines of a server-sent event stream in `buffer`, and the unfinished rest. The stream ends lines
    with CR LF, LF or CR only; httpx's aiter_lines also splits at U+0085, U+2028, U+001C and the other breaks of
    str.splitlines, which vLLM writes unescaped inside its JSON when a model generates them."""
    *lines, rest = _EVENT_LINE_END.split(buffer)
    return lines, rest


async def _event_lines(response: httpx.Response) -> AsyncIterator[str]:
    rest = ""
    async for text in response.aiter_text():
        lines, rest = split_event_lines(rest + text)
        for line in lines:
            yield line
    if rest:
        yield rest


def run_load(config: LoadConfig) -> dict:
    """Runs the load to its end in this thread; the summary."""
    return asyncio.run(LoadGenerator(config).run())


def _config_json(config: LoadConfig) -> dict:
    values = asdict(config)
    values["targets_file"] = None if config.targets_file is None else str(config.targets_file)
    values["services_file"] = str(config.services_file)
    values["mix"] = [f"{s.prompt_words}:{s.max_tokens}:{s.weight:g}:{s.prefixes}" for s in config.mix]
    values["urls"] = list(config.urls)
    return values


def parse_args(argv: Sequence[str]) -> LoadConfig:
    parser = argparse.ArgumentParser(
        prog="python -m moe_runtime loadgen", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", action="append", default=[], help="a runtime's base URL (repeatable)")
    parser.add_argument("--targets", type=Path, help="file_sd targets file, e.g. .cluster/targets.json")
    parser.add_argument(
        "--model-deployment", help="send to its status.url (alone), or with --targets to its pods in turn"
    )
    parser.add_argument("--namespace", help="the ModelDeployment's namespace (default: the kubeconfig's)")
    parser.add_argument("--service-url", help="an in-cluster Service URL, e.g. a status.url")
    parser.add_argument(
        "--services",
        type=Path,
        default=DEFAULT_SERVICES_FILE,
        help="the local stack's Service proxy file (default .cluster/services.json)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="clients (closed loop) or most in flight (open)"
    )
    parser.add_argument("--rate", type=float, help="requests per second, Poisson arrivals (open loop)")
    parser.add_argument("--duration", type=float, help="seconds to send requests for")
    parser.add_argument("--requests", type=int, help="requests to send in all")
    parser.add_argument(
        "--mix",
        default="32:16",
        help="PROMPT_WORDS:MAX_TOKENS[:WEIGHT[:SHARED_PREFIXES]],... (default 32:16)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--model", help="`model` in the requests (default: the server's)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ignore-eos", action="store_true", help="generate exactly max_tokens each time")
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="tries again when a connection failed before any answer (default 0)",
    )
    args = parser.parse_args(argv)
    try:
        service = args.service_url
        if service is None and args.model_deployment and not args.url and args.targets is None:
            try:
                service = status_url(args.model_deployment, args.namespace)
            except Exception as err:  # noqa: BLE001 - the API's refusal, a missing kubeconfig: said as they are
                raise ValueError(f"the status.url of ModelDeployment {args.model_deployment}: {err}") from err
        config = LoadConfig(
            urls=tuple(args.url),
            targets_file=args.targets,
            service_url=service,
            services_file=args.services,
            model_deployment=args.model_deployment,
            namespace=args.namespace,
            concurrency=args.concurrency,
            rate=args.rate,
            duration_s=args.duration,
            requests=args.requests,
            mix=parse_mix(args.mix),
            timeout_s=args.timeout,
            model=args.model,
            temperature=args.temperature,
            seed=args.seed,
            ignore_eos=args.ignore_eos,
            retries=args.retries,
        )
        config.check()
    except ValueError as err:
        parser.error(str(err))
    return config


def main(argv: Sequence[str]) -> int:
    generator = LoadGenerator(parse_args(argv))

    async def run() -> dict:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # the first signal stops sending, a second one abandons the requests in flight
            loop.add_signal_handler(
                sig, lambda: generator.abandon() if generator.stopping else generator.stop()
            )
        return await generator.run()

    summary = asyncio.run(run())
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if summary["completed"] else 1
