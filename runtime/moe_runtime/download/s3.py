"""`--model s3://bucket/prefix`: download every object under the prefix into a local cache, then load that.

Any S3-compatible store; boto3 reads the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, AWS_CA_BUNDLE, web identity
...) and AWS_REGION is honoured too. The cache is safe to share between processes and pods:
- one process downloads a snapshot at a time (flock on a lock file); the others wait, then reuse its files;
- each object goes to a temporary file first and is renamed into place once its size and ETag check out,
  so the checkpoint folder only ever holds whole objects;
- a partial temporary file left by a killed process is continued with a ranged GET; a dropped connection
  is too, a few times, before the download fails;
- a complete copy is reused when the listing still matches what the manifest (download/manifest.py) says
  the files hold (keys, sizes, ETags) and the store still lets this reader read each of those versions (HEAD
  with If-Match); changed objects are fetched again, deleted ones removed.
A cache shared by tenants is no channel between them: each endpoint has its own copies (download/plan.py),
and a copy is handed only to a reader the store itself lets read every object of it, so an endpoint that
cannot be reached means no copy, never an unverified one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from moe_runtime.download.etag import EtagDigest, EtagForm, md5_based, parse_etag, uniform_parts
from moe_runtime.download.manifest import Manifest
from moe_runtime.download.plan import (
    CONFIG_FILE,
    INDEX_FILE,
    ListingError,
    RemoteObject,
    S3Uri,
    default_download_dir,
    describe_error,
    index_listing,
    is_s3_uri,
    missing_checkpoint_files,
    normalize_etag,
    partial_name,
    plan_sync,
    resume_offset,
    space_shortfall,
)
from moe_runtime.download.progress import Progress, human_bytes

log = logging.getLogger("moe_runtime.download.s3")

DOWNLOAD_DIR_ENV = "MOE_RUNTIME_DOWNLOAD_DIR"
THREADS = 8  # objects fetched at once: one S3 connection rarely fills a node's network
CHUNK_BYTES = 256 * 1024
MAX_ATTEMPTS = 5  # per object, for connections lost mid-transfer and bytes that fail the ETag check
MAX_ROUNDS = 3  # listings, when objects change while we download them


class DownloadError(RuntimeError):
    """The checkpoint could not be downloaded; the message names the bucket or key and the cause."""


class _NetworkError(DownloadError):
    """The endpoint did not answer (or stopped answering): worth another try, unlike an error answer."""


class _ObjectChanged(Exception):
    """An object's ETag no longer matches the listing (If-Match failed)."""


class _Stopped(Exception):
    """Another object of the snapshot failed: stop this one."""


def link_model_dir(link: Path, target: Path) -> None:
    """`link` -> the local copy `target`: a fixed path for another engine to read, whatever folder the endpoint's
    copies live in. Replaced atomically, so that a restarted init container never leaves a reader without it."""
    link.parent.mkdir(parents=True, exist_ok=True)
    staged = link.with_name(f".{link.name}.new")
    staged.unlink(missing_ok=True)
    staged.symlink_to(target.resolve(), target_is_directory=True)
    staged.replace(link)


def local_model_dir(model: str, download_dir: str | None = None) -> str:
    """`model` itself when it is a local directory; for an s3:// URI, the local copy, downloaded first."""
    if not is_s3_uri(model):
        return model
    try:
        uri = S3Uri.parse(model)
    except ValueError as err:
        raise DownloadError(str(err)) from err
    root = Path(download_dir) if download_dir else default_download_dir(os.environ, _writable)
    return str(S3Snapshot(uri, root, s3_client()).sync())


def _writable(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def s3_client():
    import boto3
    from botocore.config import Config

    # botocore reads the region from AWS_DEFAULT_REGION only; the other AWS SDKs read AWS_REGION first
    region = os.environ.get("AWS_REGION") or None
    config = Config(connect_timeout=10, read_timeout=60, max_pool_connections=THREADS + 2)
    return boto3.session.Session().client("s3", region_name=region, config=config)


class S3Snapshot:
    """The local copy of every object under one S3 prefix."""

    def __init__(
        self,
        uri: S3Uri,
        download_dir: Path,
        client,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        threads: int = THREADS,
    ) -> None:
        self.uri, self.client = uri, client
        self.download_dir = download_dir
        endpoint = self._endpoint()
        self.local = uri.local_dir(download_dir, endpoint)
        self.state = uri.state_dir(download_dir, endpoint)
        self.partials = self.state / "partial"
        self.manifest = Manifest(self.state / "manifest.json", f"{endpoint} {uri}")
        self._max_attempts, self._threads = max_attempts, threads

    def sync(self) -> Path:
        try:
            self.partials.mkdir(parents=True, exist_ok=True)
            lock = open(self.state / "lock", "a+b")  # noqa: SIM115 (held until the end of the sync)
        except OSError as err:
            raise DownloadError(
                f"{self.download_dir}: cannot write the download folder for {self.uri} ({err}); point "
                f"--download-dir ({DOWNLOAD_DIR_ENV}) at a writable volume"
            ) from err
        with lock:  # closing it releases the flock
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s: another process is downloading it to %s; waiting for it", self.uri, self.local)
                fcntl.flock(lock, fcntl.LOCK_EX)
            for _ in range(MAX_ROUNDS):
                try:
                    return self._sync_locked()
                except _ObjectChanged as changed:
                    log.warning("%s changed while downloading; listing %s again", changed, self.uri)
        raise DownloadError(f"{self.uri}: objects kept changing while they were downloaded")

    def _sync_locked(self) -> Path:
        manifest = self.manifest
        manifest.load()
        try:
            listing = index_listing(self.uri, self._list())
        except ListingError as err:
            raise DownloadError(str(err)) from err
        if not listing:
            raise DownloadError(f"{self.uri}: no objects under this prefix (or the bucket is empty)")
        self._check_checkpoint(listing, index_text=None)
        plan = plan_sync(
            listing, manifest.objects, self._local_sizes(listing.keys() | manifest.objects.keys())
        )
        self._check_readable([listing[path] for path in plan.keep])
        if not plan.fetch and not plan.remove:
            if not manifest.complete:
                manifest.save(complete=True)
            log.info("%s: the copy in %s is current; nothing to download", self.uri, self.local)
            return self.local
        manifest.save(complete=False)
        needed = sum(listing[p].size - self._resume_offset(listing[p]) for p in plan.fetch)
        self._check_space(needed)
        log.info(
            "%s: downloading %d of %d files, %s, into %s",
            self.uri, len(plan.fetch), len(listing), human_bytes(needed), self.local,
        )  # fmt: skip
        progress = Progress(needed, time.monotonic())
        # the index first: a shard it names that the prefix lacks fails the start before the big downloads
        self._fetch_all([p for p in plan.fetch if p == INDEX_FILE], listing, progress)
        index = self.local / INDEX_FILE
        self._check_checkpoint(listing, index.read_text() if INDEX_FILE in listing else None)
        for path in plan.remove:
            (self.local / path).unlink(missing_ok=True)
            manifest.record(path, None)
        self._fetch_all([p for p in plan.fetch if p != INDEX_FILE], listing, progress)
        for leftover in self.partials.iterdir():
            leftover.unlink()
        manifest.save(complete=True)
        log.info("%s: downloaded, %s", self.uri, progress.line(time.monotonic()))
        return self.local

    def _check_checkpoint(self, listing: dict[str, RemoteObject], index_text: str | None) -> None:
        try:
            missing = missing_checkpoint_files(listing, index_text)
        except ListingError as err:
            raise DownloadError(f"{self.uri.key_uri(self.uri.prefix + INDEX_FILE)}: {err}") from err
        if missing:
            because = (
                f"{INDEX_FILE} names it" if missing[0] != CONFIG_FILE else "every checkpoint folder has one"
            )
            raise DownloadError(
                f"{self.uri.key_uri(self.uri.prefix + missing[0])}: no such object under {self.uri}, but "
                f"{because} ({len(missing)} missing)"
            )

    def _check_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.state).free
        if shortfall := space_shortfall(needed, free):
            raise DownloadError(
                f"{self.download_dir}: {human_bytes(shortfall)} short of room for {self.uri} "
                f"({human_bytes(needed)} to download, {human_bytes(free)} free)"
            )

    # --- S3 requests

    @contextlib.contextmanager
    def _s3_errors(self, where: str) -> Iterator[None]:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, NoCredentialsError

        try:
            yield
        except ClientError as err:
            error = err.response.get("Error", {})
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = error.get("Code") or str(status)
            if code == "PreconditionFailed" or status == 412:
                raise _ObjectChanged(where) from err
            raise DownloadError(describe_error(code, error.get("Message", ""), where)) from err
        except NoCredentialsError as err:
            raise DownloadError(
                f"{where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or another source boto3 reads)"
            ) from err
        except ConnectionError as err:
            raise _NetworkError(f"{where}: cannot reach the S3 endpoint {self._endpoint()} ({err})") from err
        except HTTPClientError as err:
            raise _NetworkError(f"{where}: the connection to {self._endpoint()} failed ({err})") from err

    def _endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def _list(self) -> list[RemoteObject]:
        objects = []
        with self._s3_errors(str(self.uri)):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.uri.bucket, Prefix=self.uri.prefix
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    objects.append(RemoteObject(item["Key"], item["Size"], normalize_etag(item["ETag"])))
        return objects

    def _check_readable(self, objects: list[RemoteObject]) -> None:
        """HEAD If-Match of every object a copy keeps: the store still lets this reader read that very version.
        The files may have come with another reader's credentials; only the store can say who may have them."""
        if not objects:
            return
        with ThreadPoolExecutor(min(self._threads, len(objects)), thread_name_prefix="s3-check") as pool:
            for future in [pool.submit(self._head, obj) for obj in objects]:
                future.result()

    def _head(self, obj: RemoteObject) -> None:
        with self._s3_errors(self.uri.key_uri(obj.key)):
            self.client.head_object(Bucket=self.uri.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')

    def _etag_check(self, obj: RemoteObject) -> tuple[EtagForm, int | None] | None:
        """What checks an object's bytes beyond their count (the ETag's form and the part size);
        None where the ETag is no MD5 of a known shape."""
        form = parse_etag(obj.etag)
        if form is None:
            return None
        request = {"Bucket": self.uri.bucket, "Key": obj.key}
        if form.parts is not None:
            # the answer's length is the part size. No If-Match here: some stores answer a part's own ETag
            # to this HEAD; the GET's If-Match keeps the bytes to the listed version.
            request["PartNumber"] = 1
        with self._s3_errors(self.uri.key_uri(obj.key)):
            head = self.client.head_object(**request)
        if not md5_based(head.get("ServerSideEncryption"), "SSECustomerAlgorithm" in head):
            return None
        if form.parts is None:
            return form, None
        if not uniform_parts(obj.size, head.get("ContentLength", 0), form.parts):
            log.debug("%s: parts of unequal size; checking its size only", self.uri.key_uri(obj.key))
            return None
        return form, head["ContentLength"]

    # --- fetching objects

    def _fetch_all(self, paths: list[str], listing: dict[str, RemoteObject], progress: Progress) -> None:
        if not paths:
            return
        stop = threading.Event()
        pool = ThreadPoolExecutor(min(self._threads, len(paths)), thread_name_prefix="s3-download")
        futures = [pool.submit(self._fetch, path, listing[path], progress, stop) for path in paths]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # after a failure (or an interrupt) the other objects stop at their next chunk
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:
            if not future.cancelled() and not isinstance(future.exception(), _Stopped | None):
                raise future.exception()

    def _fetch(self, path: str, obj: RemoteObject, progress: Progress, stop: threading.Event) -> None:
        from botocore.exceptions import ChecksumError, FlexibleChecksumError

        where = self.uri.key_uri(obj.key)
        partial = self.partials / partial_name(obj)
        check = self._etag_check(obj)
        for attempt in range(1, self._max_attempts + 1):
            try:
                digest = self._download_into(partial, obj, check, progress, stop)
                problem = self._verify(partial, obj, digest)
            except (_NetworkError, *_transient_errors()) as err:
                problem = f"connection lost at byte {self._resume_offset(obj)} of {obj.size} ({err})"
            except (ChecksumError, FlexibleChecksumError) as err:
                partial.unlink(missing_ok=True)
                problem = f"bytes failed the store's checksum ({err})"
            except OSError as err:
                raise DownloadError(f"{where}: writing {partial}: {err}") from err
            if problem is None:
                break
            if attempt == self._max_attempts:
                raise DownloadError(f"{where}: {problem}; gave up after {attempt} attempts")
            log.warning("%s: %s; attempt %d of %d", where, problem, attempt + 1, self._max_attempts)
            if stop.wait(min(0.5 * 2**attempt, 10.0)):
                raise _Stopped()
        target = self.local / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, target)
        except OSError as err:
            raise DownloadError(f"{where}: moving it to {target}: {err}") from err
        self.manifest.record(path, obj)

    def _download_into(
        self, partial: Path, obj: RemoteObject, check, progress: Progress, stop: threading.Event
    ) -> EtagDigest | None:
        """Completes `partial` from where it stops; the digest of all its bytes, old and new."""
        offset = self._resume_offset(obj)
        digest = EtagDigest(*check) if check else None
        with open(partial, "r+b" if offset else "wb") as file:
            if digest:
                while file.tell() < offset:
                    digest.update(file.read(min(CHUNK_BYTES, offset - file.tell())))
            file.seek(offset)
            file.truncate()
            if offset < obj.size:
                request = {"Bucket": self.uri.bucket, "Key": obj.key, "IfMatch": f'"{obj.etag}"'}
                if offset:
                    request["Range"] = f"bytes={offset}-"
                with self._s3_errors(self.uri.key_uri(obj.key)):
                    body = self.client.get_object(**request)["Body"]
                with contextlib.closing(body):
                    for chunk in body.iter_chunks(CHUNK_BYTES):
                        if stop.is_set():
                            raise _Stopped()
                        file.write(chunk)
                        if digest:
                            digest.update(chunk)
                        if line := progress.add(len(chunk), time.monotonic()):
                            log.info("%s: %s", self.uri, line)
            file.flush()
            os.fsync(file.fileno())
        return digest

    def _verify(self, partial: Path, obj: RemoteObject, digest: EtagDigest | None) -> str | None:
        """None when the partial file is the listed object; else what is wrong (and the file is gone)."""
        size = partial.stat().st_size
        if size == obj.size and (digest is None or digest.matches()):
            return None
        partial.unlink()
        if size != obj.size:
            return f"got {size} bytes where the listing says {obj.size}"
        return f"the bytes' MD5 {digest.hexdigest()} does not match the ETag {obj.etag}"

    def _resume_offset(self, obj: RemoteObject) -> int:
        try:
            partial_size = (self.partials / partial_name(obj)).stat().st_size
        except FileNotFoundError:
            partial_size = None
        return resume_offset(partial_size, obj.size)

    # --- what the local files hold

    def _local_sizes(self, paths) -> dict[str, int]:
        sizes = {}
        for path in paths:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                stat = (self.local / path).stat()
                sizes[path] = stat.st_size
        return sizes


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a dropped or stalled connection raises while a body streams in."""
    from botocore.exceptions import ConnectionError, HTTPClientError, IncompleteReadError

    return (HTTPClientError, IncompleteReadError, ConnectionError)
