"""The operator's Prometheus reads against a real Prometheus server scraping runtime-shaped exporters.

Each fake pod is a prometheus_client registry served over HTTP from a thread, exposing the runtime's series
(queue depth, latency histogram, requests by status, oldest request age); Prometheus attaches the labels a
PodMonitor would (namespace, model_deployment, revision, pod) from its scrape config.
"""

from __future__ import annotations

import math
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_api_client import PrometheusConnect
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from moe_operator.decisions.engine_metrics import ENGINES
from moe_operator.decisions.judge import Objectives, judge
from moe_operator.decisions.promdata import Measurement, NoData, PodSamples
from moe_operator.decisions.promql import SLOQueries
from moe_operator.io.metrics import OperatorMetrics
from moe_operator.io.prometheus import Prometheus
from tests.integration.prometheus import SCRAPE_INTERVAL, PrometheusServer
from tests.integration.runtime_server.harness import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

# runtime/moe_runtime/metrics.py's buckets (not imported: that module needs torch, the operator does not)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
STATUSES = ("200", "400", "429", "499", "500", "503", "504")
WEIRD_NAME = 'we"ird\\name'
WINDOW_S = 1.5  # the queue's averaging window; samples older than 3s are stale, older than 6s absent
SCRAPE_S = float(SCRAPE_INTERVAL.removesuffix("s"))


class FakePod:
    """One runtime pod's metrics, as the runtime names them, served on a loopback port."""

    def __init__(self, pod: str, namespace: str, model_deployment: str, revision: str, queue: float = 0):
        self.labels = {
            "namespace": namespace,
            "model_deployment": model_deployment,
            "revision": revision,
            "pod": pod,
        }
        r = self.registry = CollectorRegistry()
        self.queue_depth = Gauge("moe_runtime_queue_depth", "Requests waiting to start", registry=r)
        self.latency = Histogram(
            "moe_runtime_request_latency_seconds",
            "Arrival to last token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "moe_runtime_time_to_first_token_seconds",
            "Arrival to first token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "moe_runtime_time_per_output_token_seconds",
            "Per output token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter("moe_runtime_requests", "Requests by status", ["status"], registry=r)
        self.oldest = Gauge("moe_runtime_oldest_request_age_seconds", "Oldest unfinished request", registry=r)
        self.prompt_tokens = Counter(
            "moe_runtime_prefix_cache_queries", "Prompt tokens looked up", registry=r
        )
        self.cached_tokens = Counter(
            "moe_runtime_prefix_cache_hits", "Prompt tokens found cached", registry=r
        )
        for status in STATUSES:
            self.requests.labels(status)
        self.queue_depth.set(queue)
        self.server, self._thread = start_http_server(0, addr="127.0.0.1", registry=r)
        self.target = f"127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Setup:
    prometheus: PrometheusServer
    pods: dict[str, FakePod]
    client: Prometheus
    raw: PrometheusConnect  # for looking at what Prometheus holds


QUEUES = {
    ("team", "chat", "r1"): {"chat-0": 2, "chat-1": 5, "chat-2": 7},
    ("team", "chat", "r2"): {"chat-canary-0": 0},
    ("other", "chat", "r1"): {"other-0": 100},
    ("team", WEIRD_NAME, "r1"): {"weird-0": 3},
    ("team", "fading", "r1"): {"fading-stays": 1, "fading-goes": 9},
    ("team", "lonely", "r1"): {"lonely-0": 4},
    ("team", "changing", "r1"): {"changing-0": 5},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[Setup]:
    pods = {
        pod: FakePod(pod, namespace, md, revision, queue)
        for (namespace, md, revision), queues in QUEUES.items()
        for pod, queue in queues.items()
    }
    try:
        with PrometheusServer(
            tmp_path_factory.mktemp("prom"), {p.target: p.labels for p in pods.values()}
        ) as server:
            raw = server.client()
            wait_for(
                lambda: len(raw.custom_query("count_over_time(up[5s]) >= 3")) == len(pods),
                timeout=60,
                what="three scrapes of every fake pod",
            )
            client = Prometheus(server.url, metrics=OperatorMetrics())
            yield Setup(server, pods, client, raw)
            client.close()
    finally:
        for pod in pods.values():
            pod.stop()


# --- queue depth --------------------------------------------------------------------------------------------


def test_queue_samples_come_back_per_pod_of_one_model_deployment(setup):
    samples = setup.client.queue_depth("team", "chat", WINDOW_S)
    # the canary's pod is there too (the decision keeps only the Ready pods it sizes); other namespaces not
    assert samples == PodSamples({"chat-0": 2, "chat-1": 5, "chat-2": 7, "chat-canary-0": 0})


def test_the_mean_over_the_window_follows_a_change(setup):
    setup.pods["changing-0"].queue_depth.set(11)
    wait_for(
        lambda: setup.client.queue_depth("team", "changing", WINDOW_S) == PodSamples({"changing-0": 11}),
        timeout=20,
        what="the new queue depth averaged over the window",
    )


def test_label_values_with_quotes_and_backslashes_match_exactly(setup):
    assert setup.client.queue_depth("team", WEIRD_NAME, WINDOW_S) == PodSamples({"weird-0": 3})


INSTANT = 'max by (pod) (max_over_time(moe_runtime_queue_depth{namespace="{namespace}",model_deployment="{name}"}[{window}]))'
# unescaped, this name would close the selector and add every queue of the namespace "other"
INJECTION = 'x"}[1s])) or max by (pod) (max_over_time(moe_runtime_queue_depth{namespace="other'


@pytest.mark.parametrize("template", [None, INSTANT])
@pytest.mark.parametrize("namespace, name", [("team", INJECTION), (INJECTION, "chat"), ("team", "x\\")])
def test_a_name_cannot_inject_promql(setup, template, namespace, name):
    result = setup.client.queue_depth(namespace, name, 3 * WINDOW_S, template=template)
    assert isinstance(result, NoData) and result.reason == "NoSeries", result


def test_no_series(setup):
    result = setup.client.queue_depth("team", "nothing-here", WINDOW_S)
    assert result.reason == "NoSeries" and "team/nothing-here" in result.message


def test_an_instant_vector_override_is_used_as_it_is(setup):
    samples = setup.client.queue_depth("team", "chat", 3 * WINDOW_S, template=f"{INSTANT} * 10")
    assert samples == PodSamples({"chat-0": 20, "chat-1": 50, "chat-2": 70, "chat-canary-0": 0})


@pytest.mark.parametrize(
    "template, message",
    [
        ("sum(rate(moe_runtime_queue_depth[1m]", "Prometheus answered 400: bad_data"),
        ('moe_runtime_queue_depth{namespace="{nmespace}"}', "unknown placeholder {nmespace}"),
        ('sum(moe_runtime_queue_depth{namespace="{namespace}"})', "without a pod label"),
        ("scalar(vector(1))", "scalar"),
        # two series that abs() leaves with the same labels: Prometheus fails the evaluation (422)
        (
            'abs({__name__=~"moe_runtime_queue_depth|moe_runtime_oldest_request_age_seconds",pod="chat-0"})',
            "Prometheus answered 422: execution: vector cannot contain metrics with the same labelset",
        ),
    ],
)
def test_a_bad_override_is_a_failed_query(setup, template, message):
    result = setup.client.queue_depth("team", "chat", WINDOW_S, template=template)
    assert isinstance(result, NoData) and result.reason == "QueryFailed", result
    assert message in result.message


def last_sample_time(setup, pod: str) -> float:
    series = setup.raw.custom_query(f'moe_runtime_queue_depth{{pod="{pod}"}}[30s]')
    return max(float(t) for t, _ in series[0]["values"])


def test_a_target_that_disappears_goes_stale_then_absent(setup):
    for pod in ("fading-goes", "lonely-0"):
        setup.pods[pod].stop()
    wait_for(
        lambda: setup.raw.custom_query('up{pod=~"fading-goes|lonely-0"} == 0'),
        timeout=20,
        what="Prometheus to see the targets down",
    )
    last = last_sample_time(setup, "lonely-0")
    # evaluated at the moment of the last scrape, both pods were there
    assert setup.client.queue_depth("team", "fading", WINDOW_S, now=last) == PodSamples(
        {"fading-stays": 1, "fading-goes": 9}
    )
    wait_for(
        lambda: time.time() > last + 6 * WINDOW_S, timeout=30, what="the lookback to pass the last sample"
    )
    goes_last = last_sample_time(setup, "fading-goes")
    later = goes_last + 2 * WINDOW_S + 0.5
    assert setup.client.queue_depth("team", "fading", WINDOW_S, now=later) == PodSamples({"fading-stays": 1})
    stale = setup.client.queue_depth("team", "lonely", WINDOW_S, now=last + 2 * WINDOW_S + 0.5)
    assert stale.reason == "StaleSeries" and "older than twice the 1.5s window" in stale.message, stale
    assert setup.client.queue_depth("team", "lonely", WINDOW_S, now=last + 5 * WINDOW_S).reason == "NoSeries"
    assert setup.client.queue_depth("team", "lonely", WINDOW_S).reason == "NoSeries"


# --- canary windows -----------------------------------------------------------------------------------------


def scalar(setup, query: str) -> float | None:
    result = setup.raw.custom_query(query)
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def canary_traffic(setup) -> tuple[float, float]:
    """Known traffic on the canary pod: 100 finished generations (98 at 0.3s, 2 at 7s), answers 200 x100,
    429 x20, 499 x3, 500 x10, 503 x5, a request once seen 42s old, 100 of 1000 prompt tokens found in its prefix
    cache (the stable pod: 800 of 1000). Returns (before, end): a time before
    any of it and the end of a window holding all of it."""
    pod = setup.pods["chat-canary-0"]
    before = time.time()
    wait_for(lambda: time.time() > before + 2 * SCRAPE_S, timeout=10, what="zero samples before the traffic")
    for _ in range(98):
        pod.latency.observe(0.3)
        pod.ttft.observe(0.03)
    for _ in range(2):
        pod.latency.observe(7.0)
        pod.ttft.observe(0.03)
    stable = setup.pods["chat-0"]
    for _ in range(50):
        stable.latency.observe(0.3)
    pod.prompt_tokens.inc(1000)
    pod.cached_tokens.inc(100)
    stable.prompt_tokens.inc(1000)
    stable.cached_tokens.inc(800)
    for status, count in (("200", 100), ("429", 20), ("499", 3), ("500", 10), ("503", 5)):
        pod.requests.labels(status).inc(count)
    pod.oldest.set(42)
    canary = 'pod="chat-canary-0"'
    wait_for(lambda: scalar(setup, f"max_over_time(moe_runtime_oldest_request_age_seconds{{{canary}}}[10s])") == 42,
             timeout=20, what="the 42s old request in Prometheus")  # fmt: skip
    pod.oldest.set(0)
    wait_for(lambda: scalar(setup, f'moe_runtime_requests_total{{{canary},status="503"}}') == 5, timeout=20,
             what="the counts in Prometheus")  # fmt: skip
    wait_for(lambda: scalar(setup, 'moe_runtime_request_latency_seconds_count{pod="chat-0"}') == 50, timeout=20,
             what="the stable pod's requests in Prometheus")  # fmt: skip
    end = time.time()
    wait_for(lambda: scalar(setup, f"timestamp(moe_runtime_queue_depth{{{canary}}})") > end + SCRAPE_S,
             timeout=20, what="a scrape after the window's end")  # fmt: skip
    return before, end


MOE = ENGINES["moe-runtime"]


def test_tracks_measure_what_each_revisions_pods_served(setup, canary_traffic):
    before, end = canary_traffic
    interval = math.ceil(end - before) + 1
    measured = setup.client.tracks("team", "chat", ["r2", "r1"], end, interval, MOE)
    assert set(measured) == {"r1", "r2"}, measured
    canary, stable = measured["r2"], measured["r1"]
    # increase() extrapolates every series of a pod by the same factor: ratios and quantiles come out exact
    assert canary.latency.quantile(0.99) == pytest.approx(7.5)  # rank 99 of 100: halfway through (5, 10]
    assert canary.latency.count_above(2.5) / canary.latency.count == pytest.approx(0.02)
    assert canary.ttft.quantile(0.5) == pytest.approx(0.025 + 0.025 * 0.5)
    assert canary.tpot.count == 0, "no time per output token observed: an empty distribution, not an error"
    statuses = {status: v / canary.outcomes["200"] * 100 for status, v in canary.outcomes.items()}
    assert statuses == pytest.approx({"200": 100, "429": 20, "499": 3, "500": 10, "503": 5})
    # the count itself is extrapolated towards the window's end, by at most about a scrape interval
    assert 100 <= canary.requests <= 100 * interval / (interval - 2.5 * SCRAPE_S)
    assert canary.oldest_in_flight_s == 42 and canary.pods == 1
    assert canary.computed_share == pytest.approx(0.9) and stable.computed_share == pytest.approx(0.2)
    assert stable.pods == 3 and stable.latency.quantile(0.5) == pytest.approx(0.25 + 0.25 * 0.5)
    window = Measurement(end, canary, canary, stable, stable)
    outcome = judge(window, Objectives(p99_latency_s=2.0, max_error_ratio=0.05), at=end)
    assert (outcome.kind, outcome.rule) == ("Failed", "Errors")  # 10 of 118 answered with 5xx
    assert "a request has been running 42s" in outcome.message  # and one hung past the limit
    assert "requests above it" not in outcome.message, "2 of 100 over the p99 limit is what a p99 allows"


def test_a_past_span_before_the_traffic_is_empty_not_missing(setup, canary_traffic):
    before, _ = canary_traffic
    quiet = setup.client.tracks("team", "chat", ["r2"], before, 2, MOE)["r2"]
    assert quiet.requests == 0 and quiet.oldest_in_flight_s == 0 and quiet.pods == 1
    assert quiet.prompt_tokens == 0 and quiet.computed_share is None, "no prompt: no share to compare"
    assert (
        judge(Measurement(before, quiet, quiet), Objectives(p99_latency_s=2.0), at=before).kind
        == "Inconclusive"
    )


def test_slo_overrides(setup, canary_traffic):
    before, end = canary_traffic
    revision = 'namespace="{namespace}",model_deployment="{name}",revision="{revision}"'
    p50 = f"histogram_quantile(0.5, sum by (le) (increase(moe_runtime_request_latency_seconds_bucket{{{revision}}}[{{window}}])))"
    errors = f'sum(increase(moe_runtime_requests_total{{{revision},status="500"}}[{{window}}])) / sum(increase(moe_runtime_requests_total{{{revision}}}[{{window}}]))'
    queries = SLOQueries(p99_latency=p50, error_ratio=errors)
    measured = setup.client.tracks("team", "chat", ["r2"], end, math.ceil(end - before) + 1, MOE, queries)[
        "r2"
    ]
    assert measured.p99_override == pytest.approx(0.25 + 0.25 * 50 / 98)  # rank 50 of the 98 in (0.25, 0.5]
    assert measured.error_ratio_override == pytest.approx(10 / 138)
    many = SLOQueries(error_ratio=f"increase(moe_runtime_requests_total{{{revision}}}[{{window}}])")
    failed = setup.client.tracks("team", "chat", ["r2"], end, 10, MOE, many)
    assert failed.reason == "QueryFailed" and "where one value was expected" in failed.message


def test_a_revision_prometheus_does_not_scrape_is_absent_and_none_scraped_is_no_data(setup):
    assert set(setup.client.tracks("team", "chat", ["r1", "r9"], time.time(), 10, MOE)) == {"r1"}
    missing = setup.client.tracks("team", "chat", ["r9"], time.time(), 10, MOE)
    assert missing.reason == "NoSeries" and "revision(s) r9" in missing.message


# --- Prometheus unreachable, behind an auth proxy, over TLS ------------------------------------------------


def test_nothing_listening_is_prometheus_unavailable():
    metrics = OperatorMetrics()
    client = Prometheus(f"http://127.0.0.1:{free_port()}", metrics=metrics)
    refused = client.queue_depth("team", "chat", WINDOW_S)
    assert refused.reason == "PrometheusUnavailable" and "Connection refused" in refused.message, refused
    assert client.tracks("team", "chat", ["r2"], time.time(), 10, MOE).reason == "PrometheusUnavailable"
    sample = metrics.registry.get_sample_value
    assert sample("moe_operator_prometheus_query_failures_total", {"reason": "PrometheusUnavailable"}) == 2
    assert sample("moe_operator_prometheus_query_duration_seconds_count", {"query": "queue_depth"}) == 1
    assert sample("moe_operator_prometheus_query_duration_seconds_count", {"query": "tracks"}) == 1


def test_a_server_that_never_answers_times_out_as_unavailable():
    with socket_that_never_answers() as url:
        client = Prometheus(url, timeout_s=0.5, metrics=OperatorMetrics())
        result = client.queue_depth("team", "chat", WINDOW_S)
    assert result.reason == "PrometheusUnavailable" and "no answer within 0.5s" in result.message, result


class socket_that_never_answers:
    def __enter__(self) -> str:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        self.sock.close()


class AuthProxy:
    """A reverse proxy that forwards GETs to `upstream` only with `Authorization: Bearer <token>`."""

    def __init__(self, upstream: str, token: str) -> None:
        self.token, self.upstream = token, upstream
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {proxy.token}":
                    self._answer(401, b"Unauthorized\n", "text/plain")
                    return
                try:
                    answer = httpx.get(proxy.upstream + self.path, timeout=5)
                except httpx.TransportError:
                    self._answer(502, b"Bad Gateway\n", "text/plain")
                    return
                self._answer(answer.status_code, answer.content, answer.headers.get("content-type", ""))

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_bearer_token_is_read_from_its_file_on_every_request(setup, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    proxy = AuthProxy(setup.prometheus.url, "first-token")
    try:
        client = Prometheus(proxy.url, bearer_token_file=token_file, metrics=OperatorMetrics())
        assert isinstance(client.queue_depth("team", "chat", WINDOW_S), PodSamples)
        # the token rotates: the file changes, and so does what the proxy wants
        token_file.write_text("second-token")
        proxy.token = "second-token"
        assert isinstance(client.queue_depth("team", "chat", WINDOW_S), PodSamples)
        proxy.token = "third-token"
        refused = client.queue_depth("team", "chat", WINDOW_S)
        assert refused.reason == "QueryFailed" and "401" in refused.message, refused
        anonymous = Prometheus(proxy.url, metrics=OperatorMetrics()).queue_depth("team", "chat", WINDOW_S)
        assert anonymous.reason == "QueryFailed" and "401" in anonymous.message
        unreadable = Prometheus(proxy.url, bearer_token_file=tmp_path / "absent", metrics=OperatorMetrics())
        result = unreadable.queue_depth("team", "chat", WINDOW_S)
        assert result.reason == "QueryFailed" and "cannot read the bearer token file" in result.message
    finally:
        proxy.close()


def test_a_proxy_without_its_prometheus_is_unavailable(tmp_path):
    proxy = AuthProxy(f"http://127.0.0.1:{free_port()}", "token")
    (tmp_path / "token").write_text("token")
    try:
        client = Prometheus(proxy.url, bearer_token_file=tmp_path / "token", metrics=OperatorMetrics())
        result = client.queue_depth("team", "chat", WINDOW_S)
    finally:
        proxy.close()
    assert result.reason == "PrometheusUnavailable" and "502" in result.message, result


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for 127.0.0.1 that it signed: (ca, cert, key)."""
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=moedeploy test CA")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


class TlsPrometheus:
    """Prometheus serving its API over TLS only (--web.config.file with tls_server_config)."""

    def __init__(self, workdir: Path, targets: dict[str, dict[str, str]]) -> None:
        self.ca, cert, key = make_certificates(workdir)
        web = workdir / "web.yml"
        web.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}}))
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": SCRAPE_INTERVAL},
            "scrape_configs": [{"job_name": "moe-runtime",
                                "static_configs": [{"targets": [t], "labels": labels} for t, labels in targets.items()]}],
        }))  # fmt: skip
        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [shutil.which("prometheus") or "/usr/bin/prometheus", f"--config.file={config}",
                 f"--web.config.file={web}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        context = ssl.create_default_context(cafile=str(self.ca))

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/-/ready", verify=context, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=60, what="Prometheus over TLS")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def test_tls_with_a_ca_file_then_prometheus_stopped(setup, tmp_path):
    pod = setup.pods["chat-0"]
    server = TlsPrometheus(tmp_path, {pod.target: pod.labels})
    try:
        verified = Prometheus(server.url, ca_file=server.ca, metrics=OperatorMetrics())
        wait_for(lambda: isinstance(verified.queue_depth("team", "chat", WINDOW_S), PodSamples), timeout=30,
                 what="a first scrape by the TLS Prometheus")  # fmt: skip
        assert verified.queue_depth("team", "chat", WINDOW_S) == PodSamples({"chat-0": 2})
        untrusted = Prometheus(server.url, metrics=OperatorMetrics()).queue_depth("team", "chat", WINDOW_S)
        assert (
            untrusted.reason == "PrometheusUnavailable" and "CERTIFICATE_VERIFY_FAILED" in untrusted.message
        )
        skipping = Prometheus(server.url, insecure_skip_verify=True, metrics=OperatorMetrics())
        assert skipping.queue_depth("team", "chat", WINDOW_S) == PodSamples({"chat-0": 2})
    finally:
        server.stop()
    stopped = verified.queue_depth("team", "chat", WINDOW_S)
    assert stopped.reason == "PrometheusUnavailable", stopped
