"""The pure decisions behind s3:// downloads: URIs, key-to-file mapping, what to fetch, where to resume."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_runtime.download.manifest import Manifest
from moe_runtime.download.plan import (
    ListingError,
    RemoteObject,
    S3Uri,
    default_download_dir,
    describe_error,
    index_listing,
    missing_checkpoint_files,
    partial_name,
    plan_sync,
    relative_path,
    resume_offset,
)
from moe_runtime.download.s3 import local_model_dir
from moe_runtime.serve.command import parse_args

KEY_TEXT = st.text(alphabet="ab/.\0é ", max_size=12)


def test_uris_name_a_bucket_and_a_folder_prefix():
    assert S3Uri.parse("s3://models/org/qwen") == S3Uri("models", "org/qwen/")
    assert S3Uri.parse("s3://models/org/qwen/") == S3Uri("models", "org/qwen/")
    assert S3Uri.parse("s3://models") == S3Uri.parse("s3://models/") == S3Uri("models", "")
    assert str(S3Uri.parse("s3://models/org/qwen")) == "s3://models/org/qwen/"
    minio = "https://minio.example:9000"
    folder = "minio.example_9000-" + hashlib.sha256(minio.encode()).hexdigest()[:8]
    assert S3Uri("models", "org/qwen/").local_dir(Path("/c"), minio) == Path(
        f"/c/s3/{folder}/models/org/qwen"
    )
    assert S3Uri("models", "").local_dir(Path("/c"), minio) == Path(f"/c/s3/{folder}/models")


@pytest.mark.parametrize(
    "uri",
    [
        "s3://",
        "s3:///qwen",
        "s3://../x",
        "s3://models/a/../b",
        "s3://models/a//b",
        "s3://models/./a",
        "gs://m/a",
    ],
)
def test_uris_that_cannot_be_a_folder_are_refused(uri):
    with pytest.raises(ValueError, match="s3://|not an s3"):
        S3Uri.parse(uri)


def test_snapshots_keep_their_bookkeeping_apart_from_each_other_and_from_the_files():
    a, b = S3Uri.parse("s3://models/a"), S3Uri.parse("s3://models/b")
    root, aws = Path("/cache"), "https://s3.us-east-1.amazonaws.com"
    assert a.state_dir(root, aws) != b.state_dir(root, aws)
    assert a.state_dir(root, aws).parent == root / ".moe-runtime"  # no bucket name starts with "."


@given(
    endpoints=st.lists(
        st.sampled_from(["http://a", "https://a", "http://a:1", "http://b", "http://a/path"]),
        min_size=2,
        max_size=2,
        unique=True,
    )
)
def test_the_same_bucket_at_another_endpoint_is_another_snapshot(endpoints):
    """Another endpoint may hold other bytes under the same names (a tenant's own store): its copy must never
    be the one another endpoint's reader finds."""
    uri, root = S3Uri.parse("s3://models/a"), Path("/cache")
    one, other = endpoints
    assert uri.local_dir(root, one) != uri.local_dir(root, other)
    assert uri.state_dir(root, one) != uri.state_dir(root, other)


@given(key=KEY_TEXT, prefix=st.sampled_from(["", "m/", "m/x/"]))
def test_a_key_maps_to_a_file_inside_the_snapshot_or_is_refused(key, prefix):
    uri = S3Uri("models", prefix)
    try:
        path = relative_path(uri, prefix + key)
    except ListingError:
        parts = key.split("/")
        assert any(p in ("", ".", "..") or "\0" in p for p in parts)
        return
    root = "/cache/s3/models"
    assert os.path.normpath(os.path.join(root, path)).startswith(root + "/")
    assert prefix + path == prefix + key  # one file per key, and back


@given(keys=st.lists(st.text(alphabet="ab/", min_size=1, max_size=6), max_size=8, unique=True))
def test_a_listing_never_needs_a_path_to_be_both_file_and_folder(keys):
    objects = [RemoteObject(f"m/{k}", 1, "e") for k in keys]
    try:
        listing = index_listing(S3Uri("models", "m/"), objects)
    except ListingError:
        return
    assert set(listing) == {k for k in keys if not k.endswith("/")}
    for path in listing:
        assert not any(other.startswith(path + "/") for other in listing)


def test_folder_markers_are_skipped_and_clashes_named():
    uri = S3Uri("models", "m/")
    listing = index_listing(
        uri, [RemoteObject("m/", 0, "e"), RemoteObject("m/sub/", 0, "e"), RemoteObject("m/a", 1, "e")]
    )
    assert list(listing) == ["a"]
    with pytest.raises(ListingError, match="s3://models/m/a is an object and also a folder"):
        index_listing(uri, [RemoteObject("m/a", 1, "e"), RemoteObject("m/a/b", 1, "e")])


def test_a_checkpoint_needs_its_config_and_every_shard_its_index_names():
    listing = {name: RemoteObject(name, 1, "e") for name in ("config.json", "s1.safetensors")}
    index = '{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"}}'
    assert missing_checkpoint_files(listing, None) == []
    assert missing_checkpoint_files(listing, index) == ["s2.safetensors"]
    assert missing_checkpoint_files({}, None) == ["config.json"]
    with pytest.raises(ListingError, match="unreadable index"):
        missing_checkpoint_files(listing, '{"weight_map": 3}')


OBJECTS = st.builds(
    RemoteObject, key=st.sampled_from("kl"), size=st.integers(0, 3), etag=st.sampled_from("xy")
)
PATHS = st.sampled_from(["a", "b", "c", "d/e"])


@given(
    remote=st.dictionaries(PATHS, OBJECTS),
    manifest=st.dictionaries(PATHS, OBJECTS),
    local=st.dictionaries(PATHS, st.integers(0, 3)),
)
def test_the_plan_keeps_only_files_known_to_hold_the_listed_object(remote, manifest, local):
    plan = plan_sync(remote, manifest, local)
    assert set(plan.fetch) | set(plan.keep) == set(remote)
    assert not set(plan.fetch) & set(plan.keep)
    for path in plan.keep:
        assert manifest[path] == remote[path] and local[path] == remote[path].size
    assert set(plan.remove) == set(manifest) - set(remote)  # only files the manifest says we wrote
    assert [remote[p].size for p in plan.fetch] == sorted(remote[p].size for p in plan.fetch)
    # once the plan has run, the same listing fetches and removes nothing
    after = plan_sync(remote, remote, {p: o.size for p, o in remote.items()})
    assert after.fetch == after.remove == () and set(after.keep) == set(remote)


@given(partial=st.none() | st.integers(0, 100), size=st.integers(0, 100))
def test_a_download_resumes_after_the_bytes_a_partial_file_holds_never_past_the_end(partial, size):
    offset = resume_offset(partial, size)
    assert 0 <= offset <= size
    assert offset == (partial if partial is not None and partial <= size else 0)


@given(a=OBJECTS, b=OBJECTS)
def test_each_object_version_has_its_own_partial_file(a, b):
    assert (partial_name(a) == partial_name(b)) == (a == b)


def test_the_default_download_dir_is_under_home_when_it_is_writable_else_tmp():
    assert default_download_dir({"HOME": "/home/u"}, lambda p: True) == Path(
        "/home/u/.cache/moedeploy/models"
    )
    assert default_download_dir({"HOME": "/nonexistent"}, lambda p: False) == Path("/tmp/moedeploy/models")
    assert default_download_dir({}, lambda p: True) == Path("/tmp/moedeploy/models")
    assert default_download_dir({"TMPDIR": "/scratch"}, lambda p: False) == Path("/scratch/moedeploy/models")


@pytest.mark.parametrize(
    "code", ["AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"]
)
def test_refused_credentials_read_as_access_denied_naming_the_variables(code):
    line = describe_error(code, "nope", "s3://models/m/")
    assert (
        line.startswith(f"s3://models/m/: access denied ({code}: nope)") and "AWS_SECRET_ACCESS_KEY" in line
    )


def test_missing_buckets_and_keys_are_named():
    assert (
        describe_error("NoSuchBucket", "x", "s3://nob/m/")
        == "s3://nob/m/: the bucket does not exist (NoSuchBucket)"
    )
    assert describe_error("NoSuchKey", "x", "s3://b/m/k").startswith("s3://b/m/k: no such object (NoSuchKey)")
    assert describe_error("SlowDown", "busy", "s3://b/m/k") == "s3://b/m/k: SlowDown: busy"


def test_local_directories_pass_through_and_the_download_dir_has_its_variable():
    assert local_model_dir("/models/qwen", "/unused") == "/models/qwen"
    args = parse_args(["--model", "s3://models/qwen"], {"MOE_RUNTIME_DOWNLOAD_DIR": "/cache"})
    assert (args.model, args.download_dir) == ("s3://models/qwen", "/cache")


def test_the_manifest_survives_a_restart_and_forgets_what_is_not_its_own(tmp_path):
    path = tmp_path / "manifest.json"
    written = Manifest(path, "s3://models/a/")
    written.record("config.json", RemoteObject("a/config.json", 10, "e1"))
    written.record("x.safetensors", RemoteObject("a/x.safetensors", 20, "e2"))
    written.record("x.safetensors", None)
    written.save(complete=True)

    again = Manifest(path, "s3://models/a/")
    again.load()
    assert again.objects == {"config.json": RemoteObject("a/config.json", 10, "e1")} and again.complete
    other = Manifest(path, "s3://models/b/")  # another snapshot's record (or an older format) counts as none
    other.load()
    assert (other.objects, other.complete) == ({}, False)
    path.write_text("{not json")
    again.load()
    assert (again.objects, again.complete) == ({}, False)
