"""Downloading s3:// checkpoints from a real S3 server (moto), through a proxy that logs, cuts and holds."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moe_runtime.download.plan import S3Uri, partial_name
from moe_runtime.download.s3 import DownloadError, S3Snapshot, local_model_dir, s3_client
from tests.integration.model_download.conftest import MULTIPART_SHARD, PREFIX, SHARD, listed_object
from tests.integration.model_download.proxy import Rule
from tests.integration.model_download.s3server import upload_folder
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return sorted(p.name for p in b.iterdir()) == names and not mismatch and not errors


def test_downloads_every_object_into_the_cache(bucket, checkpoint, proxy, aws_env, tmp_path):
    local = Path(local_model_dir(f"s3://{bucket}/{PREFIX}", str(tmp_path)))

    assert local.relative_to(tmp_path).parts[0] == "s3"
    assert local.relative_to(tmp_path).parts[2:] == (bucket, "org", "tiny-qwen3")  # the model's name
    assert local.relative_to(tmp_path).parts[1].startswith("127.0.0.1_")  # the endpoint's folder
    assert same_files(checkpoint, local)
    assert sorted(r.path.rsplit("/", 1)[1] for r in proxy.object_gets()) == sorted(os.listdir(checkpoint))


def test_a_current_copy_is_reused_after_one_listing_and_a_read_check_of_each_object(
    bucket, checkpoint, proxy, aws_env, tmp_path
):
    uri = f"s3://{bucket}/{PREFIX}/"
    first = local_model_dir(uri, str(tmp_path))
    before = len(proxy.requests)

    assert local_model_dir(uri, str(tmp_path)) == first
    listing, *checks = proxy.requests[before:]
    assert listing.method == "GET" and "list-type=2" in listing.target
    # HEAD If-Match: this reader may still read the very version the copy holds; no bytes move
    assert sorted(r.path.rsplit("/", 1)[1] for r in checks) == sorted(os.listdir(checkpoint))
    assert {r.method for r in checks} == {"HEAD"} and all("if-match" in r.headers for r in checks)


def test_a_copy_is_not_handed_to_a_reader_the_store_would_not_let_read_it(
    s3, bucket, proxy, aws_env, monkeypatch, tmp_path
):
    """A tenant sharing the node's cache who may list the bucket but not read it (or names a bucket it
    cannot read at all) must not get the copy another tenant's credentials fetched."""
    uri = f"s3://{bucket}/{PREFIX}"
    local_model_dir(uri, str(tmp_path))
    for name, value in s3.env(proxy.url, user="lister").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DownloadError, match=rf"s3://{bucket}/{PREFIX}/.*: access denied"):
        local_model_dir(uri, str(tmp_path))


def test_another_endpoint_with_the_same_bucket_never_touches_the_copy(
    s3, other_s3, bucket, checkpoint, aws_env, monkeypatch, tmp_path
):
    """A tenant's own store can answer any bucket name with any bytes (and any ETags): what it serves lands in
    a copy of its own, and the first tenant's copy stays as its store made it."""
    uri = f"s3://{bucket}/{PREFIX}"
    honest = Path(local_model_dir(uri, str(tmp_path)))
    forged = tmp_path / "forged"
    shutil.copytree(checkpoint, forged)
    (forged / "tokenizer_config.json").write_text('{"chat_template": "pwned"}')
    client = other_s3.client()
    client.create_bucket(Bucket=bucket)
    upload_folder(client, bucket, PREFIX, forged)
    for name, value in other_s3.env().items():
        monkeypatch.setenv(name, value)

    poisoned = Path(local_model_dir(uri, str(tmp_path)))
    assert poisoned != honest
    assert (poisoned / "tokenizer_config.json").read_text() == '{"chat_template": "pwned"}'
    assert same_files(checkpoint, honest)


def test_changed_objects_are_fetched_again_and_deleted_ones_removed(
    s3, bucket, checkpoint, proxy, aws_env, tmp_path
):
    uri = f"s3://{bucket}/{PREFIX}"
    local = Path(local_model_dir(uri, str(tmp_path)))
    client = s3.client()
    # one object of another size, one of the same size with other bytes (only its ETag tells), one gone
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/tokenizer_config.json", Body=b'{"model_max_length": 64}')
    shard = bytearray((checkpoint / SHARD).read_bytes())
    shard[-1] ^= 0xFF
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{SHARD}", Body=bytes(shard))
    client.delete_object(Bucket=bucket, Key=f"{PREFIX}/generation_config.json")
    before = len(proxy.object_gets())

    assert local_model_dir(uri, str(tmp_path)) == str(local)
    refetched = sorted(r.path.rsplit("/", 1)[1] for r in proxy.object_gets()[before:])
    assert refetched == [SHARD, "tokenizer_config.json"]
    assert (local / SHARD).read_bytes() == bytes(shard)
    assert (local / "tokenizer_config.json").read_bytes() == b'{"model_max_length": 64}'
    assert not (local / "generation_config.json").exists()
    assert (local / MULTIPART_SHARD).read_bytes() == (checkpoint / MULTIPART_SHARD).read_bytes()


def test_an_empty_prefix_fails_naming_it(bucket, aws_env, tmp_path):
    with pytest.raises(DownloadError, match=rf"s3://{bucket}/org/nothing/: no objects under this prefix"):
        local_model_dir(f"s3://{bucket}/org/nothing", str(tmp_path))


def test_a_missing_bucket_fails_naming_it(aws_env, tmp_path):
    with pytest.raises(
        DownloadError, match=r"s3://no-such-bucket/m/: the bucket does not exist \(NoSuchBucket\)"
    ):
        local_model_dir("s3://no-such-bucket/m", str(tmp_path))


def test_a_folder_without_config_json_fails_before_downloading(s3, bucket, proxy, aws_env, tmp_path):
    s3.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/config.json")
    with pytest.raises(DownloadError, match=rf"s3://{bucket}/{PREFIX}/config.json: no such object"):
        local_model_dir(f"s3://{bucket}/{PREFIX}", str(tmp_path))
    assert proxy.object_requests() == []


def test_a_shard_the_index_names_but_the_prefix_lacks_fails_before_the_shards_download(
    s3, bucket, proxy, aws_env, tmp_path
):
    s3.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{SHARD}")
    with pytest.raises(
        DownloadError, match=rf"s3://{bucket}/{PREFIX}/{SHARD}: no such object under .*index\.json names it"
    ):
        local_model_dir(f"s3://{bucket}/{PREFIX}", str(tmp_path))
    assert [r.path.rsplit("/", 1)[1] for r in proxy.object_gets()] == ["model.safetensors.index.json"]


@pytest.mark.parametrize(
    ("variable", "value", "code"),
    [
        ("AWS_SECRET_ACCESS_KEY", "wrong", "SignatureDoesNotMatch"),
        ("AWS_ACCESS_KEY_ID", "AKIANOBODY", "InvalidAccessKeyId"),
    ],
)
def test_wrong_credentials_fail_as_access_denied(
    bucket, aws_env, monkeypatch, tmp_path, variable, value, code
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(DownloadError, match=rf"s3://{bucket}/{PREFIX}/: access denied \({code}"):
        local_model_dir(f"s3://{bucket}/{PREFIX}", str(tmp_path))


def test_an_unreachable_endpoint_fails_naming_it_even_with_a_complete_copy(bucket, proxy, aws_env, tmp_path):
    """Only the store can say whether this reader may have the copy: no store, no copy."""
    uri = f"s3://{bucket}/{PREFIX}"
    local_model_dir(uri, str(tmp_path))
    proxy.close()
    with pytest.raises(
        DownloadError, match=rf"s3://{bucket}/{PREFIX}/: cannot reach the S3 endpoint {proxy.url}"
    ):
        local_model_dir(uri, str(tmp_path))


def test_a_connection_cut_mid_object_is_resumed_with_a_range_request(
    bucket, checkpoint, proxy, aws_env, tmp_path
):
    proxy.rules.append(Rule(SHARD, "cut", after_bytes=400_000))
    local = Path(local_model_dir(f"s3://{bucket}/{PREFIX}", str(tmp_path)))

    first, second = proxy.object_gets(SHARD)
    assert "range" not in first.headers
    offset = int(second.headers["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < offset < 400_000
    assert same_files(checkpoint, local)


def test_a_partial_file_left_by_a_failed_start_is_resumed_by_the_next(
    s3, bucket, checkpoint, proxy, aws_env, tmp_path
):
    uri = S3Uri.parse(f"s3://{bucket}/{PREFIX}")
    proxy.rules.append(Rule(SHARD, "cut", after_bytes=400_000))
    with pytest.raises(DownloadError, match=rf"{uri.key_uri(PREFIX + '/' + SHARD)}: connection lost at byte"):
        S3Snapshot(uri, tmp_path, s3_client(), max_attempts=1).sync()
    partial = uri.state_dir(tmp_path, proxy.url) / "partial" / partial_name(listed_object(s3, bucket, SHARD))
    left = partial.stat().st_size
    assert left > 0

    local = Path(local_model_dir(str(uri), str(tmp_path)))
    assert proxy.object_gets(SHARD)[-1].headers["range"] == f"bytes={left}-"
    assert same_files(checkpoint, local)
    assert not partial.exists()


def test_bytes_that_fail_the_multipart_etag_are_fetched_again(bucket, checkpoint, proxy, aws_env, tmp_path):
    proxy.rules.append(Rule(MULTIPART_SHARD, "corrupt", after_bytes=300_000))
    local = Path(local_model_dir(f"s3://{bucket}/{PREFIX}", str(tmp_path)))

    assert [r.headers.get("range") for r in proxy.object_gets(MULTIPART_SHARD)] == [None, None]
    assert same_files(checkpoint, local)


def test_a_corrupt_partial_file_fails_the_md5_and_is_fetched_from_the_start(
    s3, bucket, checkpoint, proxy, aws_env, tmp_path
):
    uri = S3Uri.parse(f"s3://{bucket}/{PREFIX}")
    partial = uri.state_dir(tmp_path, proxy.url) / "partial" / partial_name(listed_object(s3, bucket, SHARD))
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 100_000)  # what a crashed node can leave behind
    local = Path(local_model_dir(str(uri), str(tmp_path)))

    assert [r.headers.get("range") for r in proxy.object_gets(SHARD)] == ["bytes=100000-", None]
    assert same_files(checkpoint, local)


def download_process(uri: str, cache: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "moe_runtime", "download", "--model", uri, "--download-dir", str(cache)]
    return subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True
    )


def test_two_processes_sharing_a_cache_download_each_object_once(s3, bucket, checkpoint, proxy, tmp_path):
    uri, cache, env = f"s3://{bucket}/{PREFIX}", tmp_path / "cache", s3.env(proxy.url)
    proxy.rules.append(Rule(SHARD, "hold", after_bytes=100_000))
    first = download_process(uri, cache, env, tmp_path / "first.log")
    wait_for(proxy.holding.is_set, timeout=60, what="the first download to reach the held shard")
    second = download_process(uri, cache, env, tmp_path / "second.log")
    wait_for(lambda: "waiting for it" in (tmp_path / "second.log").read_text(), timeout=60, what="a wait")
    proxy.released.set()

    outputs = [p.communicate(timeout=120)[0].strip() for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], (tmp_path / "second.log").read_text()
    assert outputs[0] == outputs[1] == str(S3Uri.parse(uri).local_dir(cache, proxy.url))
    gets = sorted(r.path.rsplit("/", 1)[1] for r in proxy.object_gets())
    assert gets == sorted(os.listdir(checkpoint))  # each object once, by the first process
    assert same_files(checkpoint, Path(outputs[0]))


def test_the_link_gives_another_engine_a_fixed_path_to_the_endpoints_copy(
    s3, bucket, checkpoint, proxy, tmp_path
):
    """vLLM and SGLang pods read the checkpoint at a path fixed in their command line; the copy itself lives in
    a folder per endpoint, which only the download knows."""
    uri, cache, env = f"s3://{bucket}/{PREFIX}", tmp_path / "cache", s3.env(proxy.url)
    link = cache / "model"
    for attempt in ("first", "restarted"):  # an init container that runs again replaces its link
        command = [
            sys.executable,
            "-m",
            "moe_runtime",
            "download",
            "--model",
            uri,
            "--download-dir",
            str(cache),
        ]
        done = subprocess.run(
            [*command, "--link", str(link)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (attempt, done.stderr)
        assert link.is_symlink() and link.resolve() == Path(done.stdout.strip()).resolve(), attempt
    assert same_files(checkpoint, link)
