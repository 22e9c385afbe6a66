"""`serve --model s3://...` as real processes: not ready while downloading, resumes after a kill, serves,
and fails its start with the cause when the store refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from moe_runtime.download.plan import S3Uri, partial_name
from tests.integration.model_download.conftest import PREFIX, SHARD, listed_object
from tests.integration.model_download.proxy import Rule
from tests.integration.runtime_server.harness import free_port
from tests.waiting import wait_for, wait_until_serving

pytestmark = pytest.mark.integration


def serve(model: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "moe_runtime", "serve", "--model", model, "--host", "127.0.0.1"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            env={**os.environ, "OMP_NUM_THREADS": "1", **env},
            stdout=out,
            stderr=out,
        )
    return process, f"http://127.0.0.1:{port}"


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None


def test_not_ready_while_downloading_then_resumed_after_a_kill_and_serving(s3, bucket, proxy, tmp_path):
    uri = f"s3://{bucket}/{PREFIX}"
    env = {**s3.env(proxy.url), "MOE_RUNTIME_DOWNLOAD_DIR": str(tmp_path / "cache")}
    partial = S3Uri.parse(uri).state_dir(tmp_path / "cache", proxy.url) / "partial"
    partial /= partial_name(listed_object(s3, bucket, SHARD))
    proxy.rules.append(Rule(SHARD, "hold", after_bytes=600_000))

    first, url = serve(uri, env, tmp_path / "first.log")
    try:
        wait_for(proxy.holding.is_set, timeout=180, what="the download to reach the held shard")
        wait_for(lambda: status(f"{url}/health") == 200, timeout=60, what="/health while downloading")
        assert status(f"{url}/ready") == 503
        wait_for(lambda: partial.exists() and partial.stat().st_size > 0, timeout=60, what="a partial file")
        first.terminate()  # a pod deleted while it downloads: it must stop now, not after the download
        assert first.wait(timeout=20) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
    left = partial.stat().st_size
    proxy.released.set()
    before = len(proxy.requests)

    second, url = serve(uri, env, tmp_path / "second.log")
    try:
        wait_until_serving(f"{url}/ready", second, tmp_path / "second.log", timeout=180)
        answer = httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny-qwen3", "prompt": "Hello", "max_tokens": 4, "temperature": 0},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] > 0
    finally:
        second.terminate()
        second.wait(timeout=60)
    # every other object was whole before the kill: only the held shard is fetched, from where it stopped
    fetched = [r for r in proxy.object_gets() if proxy.requests.index(r) >= before]
    assert [(r.path.rsplit("/", 1)[1], r.headers.get("range")) for r in fetched] == [
        (SHARD, f"bytes={left}-")
    ]


def test_a_refused_download_fails_the_start_naming_the_bucket_and_the_cause(s3, bucket, tmp_path):
    env = {**os.environ, **s3.env(AWS_SECRET_ACCESS_KEY="wrong"), "MOE_RUNTIME_DOWNLOAD_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "moe_runtime", "serve", "--model", f"s3://{bucket}/{PREFIX}", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1
    assert f"failed to load s3://{bucket}/{PREFIX}: s3://{bucket}/{PREFIX}/: access denied" in result.stderr
    assert "SignatureDoesNotMatch" in result.stderr
