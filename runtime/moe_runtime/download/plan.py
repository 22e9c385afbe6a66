"""What to download from an `s3://bucket/prefix` checkpoint and where it goes: pure decisions, no I/O.

A snapshot is every object under the prefix at one endpoint. It lands in
`<download dir>/s3/<endpoint>/<bucket>/<prefix>/`, one file per object at the key's path below the prefix; the
bookkeeping (lock, manifest of what the local files hold, partial downloads) lives apart in
`<download dir>/.moe-runtime/<snapshot id>/`, where no key can reach. Another endpoint is another snapshot even
for the same bucket and prefix: a store anyone can run may answer any bucket name with any bytes, and what it
serves must never be what a reader of another store finds in a shared cache.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

S3_SCHEME = "s3://"
CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
STATE_DIR = ".moe-runtime"
# Bucket names of S3 and of the S3-compatible stores; never "." or "..", never a "/".
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ListingError(ValueError):
    """The objects under a prefix cannot be a checkpoint directory (or cannot be laid out as files)."""


def is_s3_uri(model: str) -> bool:
    return model.startswith(S3_SCHEME)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    prefix: str  # "" (the whole bucket) or ending in "/": `s3://b/m` never matches the keys of `s3://b/m2`

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not is_s3_uri(uri):
            raise ValueError(f"{uri!r}: not an s3:// URI")
        bucket, _, prefix = uri[len(S3_SCHEME) :].partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"{uri!r}: {bucket!r} is not a bucket name")
        prefix = prefix.rstrip("/")
        if prefix:
            _safe_parts(prefix, what=f"{uri!r}: the prefix")
            prefix += "/"
        return cls(bucket, prefix)

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}"

    def key_uri(self, key: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{key}"

    def local_dir(self, download_dir: Path, endpoint: str) -> Path:
        return download_dir.joinpath(
            "s3", endpoint_folder(endpoint), self.bucket, *self.prefix.split("/")[:-1]
        )

    def state_dir(self, download_dir: Path, endpoint: str) -> Path:
        snapshot = f"{endpoint.rstrip('/')}\0{self}"
        return download_dir / STATE_DIR / hashlib.sha256(snapshot.encode()).hexdigest()[:20]


def endpoint_folder(endpoint: str) -> str:
    """The folder of one endpoint's snapshots: its host and port to read, a digest of the whole URL to keep
    endpoints apart (scheme and path included)."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", urlsplit(endpoint).netloc or "endpoint")[:64]
    return f"{readable}-{hashlib.sha256(endpoint.rstrip('/').encode()).hexdigest()[:8]}"


def _safe_parts(path: str, what: str) -> tuple[str, ...]:
    parts = tuple(path.split("/"))
    for part in parts:
        if part in ("", ".", "..") or "\0" in part:
            raise ListingError(f"{what} {path!r} has a path segment {part!r} that cannot be a file name")
    return parts


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    etag: str  # without the quotes

    def as_json(self) -> dict:
        return {"key": self.key, "size": self.size, "etag": self.etag}


def normalize_etag(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


def relative_path(uri: S3Uri, key: str) -> str:
    """The file a key lands in, relative to the snapshot's local directory (POSIX separators)."""
    if not key.startswith(uri.prefix):
        raise ListingError(f"{uri.key_uri(key)} is not under {uri}")
    return "/".join(_safe_parts(key[len(uri.prefix) :], what=uri.key_uri(key)))


def index_listing(uri: S3Uri, objects: Iterable[RemoteObject]) -> dict[str, RemoteObject]:
    """The listing by relative path. Folder markers (keys ending in "/") are skipped; keys that cannot be
    files, or of which one would have to be both a file and a folder, are refused."""
    listing: dict[str, RemoteObject] = {}
    for obj in objects:
        if obj.key.endswith("/"):
            continue
        listing[relative_path(uri, obj.key)] = obj
    folders = {"/".join(path.split("/")[:i]) for path in listing for i in range(1, path.count("/") + 1)}
    if clash := sorted(folders & listing.keys()):
        raise ListingError(
            f"{uri.key_uri(uri.prefix + clash[0])} is an object and also a folder of other keys"
        )
    return listing


def missing_checkpoint_files(listing: Mapping[str, RemoteObject], index_text: str | None) -> list[str]:
    """Files a checkpoint needs that the listing lacks: config.json, and every shard the index names."""
    missing = [] if CONFIG_FILE in listing else [CONFIG_FILE]
    if index_text is not None:
        try:
            shards = set(json.loads(index_text)["weight_map"].values())
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ListingError(f"{INDEX_FILE}: unreadable index ({err!r})") from err
        missing += sorted(shard for shard in shards if shard not in listing)
    return missing


@dataclass(frozen=True)
class SyncPlan:
    fetch: tuple[str, ...]  # smallest first: config, index and tokenizer are checked before the shards
    keep: tuple[str, ...]
    remove: tuple[str, ...]  # files of an earlier snapshot that the prefix no longer holds


def plan_sync(
    remote: Mapping[str, RemoteObject], manifest: Mapping[str, RemoteObject], local_sizes: Mapping[str, int]
) -> SyncPlan:
    """A local file is kept when the manifest says it holds the listed object (same key, size and ETag)
    and its size on disk agrees; everything else is fetched. The manifest names only files we wrote, so
    only those are ever removed."""
    keep = tuple(
        sorted(p for p, obj in remote.items() if manifest.get(p) == obj and local_sizes.get(p) == obj.size)
    )
    fetch = tuple(sorted(remote.keys() - set(keep), key=lambda p: (remote[p].size, p)))
    remove = tuple(sorted(manifest.keys() - remote.keys()))
    return SyncPlan(fetch, keep, remove)


def partial_name(obj: RemoteObject) -> str:
    """The temporary file of one object version: a partial download of another version is never resumed."""
    return hashlib.sha256(f"{obj.key}\0{obj.size}\0{obj.etag}".encode()).hexdigest()[:32] + ".part"


def resume_offset(partial_size: int | None, size: int) -> int:
    """Where a download continues: after the bytes a partial file holds, unless it holds too many."""
    if partial_size is None or partial_size > size:
        return 0
    return partial_size


def space_shortfall(bytes_needed: int, bytes_free: int) -> int:
    """How many more bytes the download directory's file system must have free (0: enough)."""
    return max(0, bytes_needed - bytes_free)


def default_download_dir(environ: Mapping[str, str], writable: Callable[[Path], bool]) -> Path:
    """$HOME/.cache/moedeploy/models where HOME is usable, else under /tmp (a container's HOME often is not:
    the runtime image's user has none)."""
    home = environ.get("HOME")
    if home and writable(Path(home)):
        return Path(home) / ".cache" / "moedeploy" / "models"
    return Path(environ.get("TMPDIR") or "/tmp") / "moedeploy" / "models"


# The error codes S3 and the compatible stores answer for credentials that are wrong, expired or not allowed.
ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "Forbidden",
        "403",
    }
)


def describe_error(code: str, message: str, where: str) -> str:
    """One log-worthy line for an S3 error answer: what failed (bucket or key) and why."""
    if code in ACCESS_CODES:
        return (
            f"{where}: access denied ({code}: {message}); check the credentials (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) and that they may list and read this prefix"
        )
    if code == "NoSuchBucket":
        return f"{where}: the bucket does not exist ({code})"
    if code in ("NoSuchKey", "404", "NotFound"):
        return f"{where}: no such object ({code}); was it deleted while downloading?"
    return f"{where}: {code}: {message}"
