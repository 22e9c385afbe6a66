"""One S3 server and one tiny sharded checkpoint per session; a fresh bucket and proxy per test."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from moe_runtime.download.plan import RemoteObject
from tests.integration.model_download.proxy import S3Proxy
from tests.integration.model_download.s3server import MotoServer, upload_folder

PREFIX = "org/tiny-qwen3"
# shard 1 goes up as a multipart upload: its ETag is an MD5 of MD5s, checked with the part size
MULTIPART_SHARD = "model-00001-of-00003.safetensors"
SHARD = "model-00002-of-00003.safetensors"
_buckets = itertools.count()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(scope="session")
def other_s3(tmp_path_factory):
    """A second store: another tenant's own endpoint, which may hold anything under any bucket name."""
    with MotoServer(tmp_path_factory.mktemp("moto-other") / "moto.log") as server:
        yield server


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s3-checkpoint") / "tiny-qwen3"
    command = [
        sys.executable,
        "-m",
        "moe_runtime",
        "make-checkpoint",
        "--family",
        "qwen3_moe",
        "--out",
        str(out),
    ]
    subprocess.run([*command, "--shard-bytes", "800000"], check=True, capture_output=True, timeout=300)
    assert (out / MULTIPART_SHARD).is_file() and (out / SHARD).is_file()
    return out


@pytest.fixture
def bucket(s3, checkpoint) -> str:
    """A new bucket holding the checkpoint under PREFIX."""
    name = f"models-{next(_buckets)}"
    client = s3.client()
    client.create_bucket(Bucket=name)
    upload_folder(client, name, PREFIX, checkpoint, multipart={MULTIPART_SHARD})
    return name


@pytest.fixture
def proxy(s3):
    running = S3Proxy(s3.port)
    yield running
    running.close()


@pytest.fixture
def aws_env(s3, proxy, monkeypatch):
    """The AWS variables of this process point at the S3 server through the proxy."""
    for name, value in s3.env(proxy.url).items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)


def listed_object(s3, bucket: str, name: str) -> RemoteObject:
    head = s3.client().head_object(Bucket=bucket, Key=f"{PREFIX}/{name}")
    return RemoteObject(f"{PREFIX}/{name}", head["ContentLength"], head["ETag"].strip('"'))
