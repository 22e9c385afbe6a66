"""Checking streamed bytes against S3 ETags (single-part MD5 and multipart MD5-of-MD5s), and progress lines."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_runtime.download.etag import EtagDigest, EtagForm, md5_based, parse_etag, uniform_parts
from moe_runtime.download.progress import Progress, human_bytes


def s3_multipart_etag(data: bytes, part_size: int) -> str:
    """How S3 computes a multipart upload's ETag, written out directly."""
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"


def feed(digest: EtagDigest, data: bytes, cuts: list[int]) -> EtagDigest:
    edges = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in zip(edges, edges[1:], strict=False):
        digest.update(data[start:end])
    return digest


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_a_single_part_etag_is_the_md5_however_the_bytes_arrive(data, cuts):
    digest = feed(EtagDigest(parse_etag(hashlib.md5(data).hexdigest())), data, cuts)
    assert digest.matches()


@given(
    data=st.binary(min_size=1, max_size=300),
    part_size=st.integers(1, 64),
    cuts=st.lists(st.integers(0, 300), max_size=6),
)
def test_a_multipart_etag_is_the_md5_of_the_parts_md5s_however_the_bytes_arrive(data, part_size, cuts):
    form = parse_etag(s3_multipart_etag(data, part_size))
    assert form.parts == math.ceil(len(data) / part_size)
    assert feed(EtagDigest(form, part_size), data, cuts).matches()


@given(data=st.binary(min_size=1, max_size=200), flip=st.integers(0, 199), part_size=st.integers(1, 64))
def test_one_changed_byte_never_matches(data, flip, part_size):
    changed = bytearray(data)
    changed[flip % len(data)] ^= 0x01
    assert not feed(EtagDigest(parse_etag(hashlib.md5(data).hexdigest())), bytes(changed), []).matches()
    multipart = EtagDigest(parse_etag(s3_multipart_etag(data, part_size)), part_size)
    assert not feed(multipart, bytes(changed), []).matches()


def test_etag_forms():
    md5 = "9e107d9d372bb6826bd81d3542a419d6"
    assert parse_etag(md5) == EtagForm(md5, None)
    assert parse_etag(md5.upper()) == EtagForm(md5, None)
    assert parse_etag(f"{md5}-12") == EtagForm(md5, 12)
    for other in ("", "abc", f"{md5}-0", f"{md5}-", f"{md5}x", "W/abc"):
        assert parse_etag(other) is None
    with pytest.raises(ValueError, match="part size"):
        EtagDigest(EtagForm(md5, 3))


@given(size=st.integers(0, 10_000), part_size=st.integers(0, 500), parts=st.integers(1, 50))
def test_uniform_parts_means_every_part_but_the_last_has_the_part_size(size, part_size, parts):
    expected = part_size > 0 and (parts - 1) * part_size < size <= parts * part_size
    assert uniform_parts(size, part_size, parts) == expected


def test_kms_and_customer_key_encryption_make_etags_that_are_no_md5():
    assert md5_based(None, customer_key=False) and md5_based("AES256", customer_key=False)
    assert not md5_based("aws:kms", customer_key=False) and not md5_based("aws:kms:dsse", customer_key=False)
    assert not md5_based(None, customer_key=True)


def test_progress_lines_come_at_most_once_per_interval():
    progress = Progress(total=4 * 1024**3, started=100.0, interval_s=10.0)
    assert progress.add(1024**3, now=105.0) is None
    assert progress.add(1024**3, now=110.0) == "2.0 GiB of 4.0 GiB (50%), 204.8 MiB/s"
    assert progress.add(1, now=115.0) is None
    assert progress.add(1, now=120.0) is not None
    assert [human_bytes(n) for n in (5, 2048, 3 * 1024**2, 5 * 1024**4)] == [
        "5 B",
        "2.0 KiB",
        "3.0 MiB",
        "5120.0 GiB",
    ]
