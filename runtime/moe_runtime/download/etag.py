"""Checking downloaded bytes against an S3 ETag, computed while they stream in.

A single-part upload's ETag is the MD5 of the object. A multipart upload's is the MD5 of the parts' MD5s,
then "-" and the number of parts: checkable once the part size is known (S3 answers it for part 1), and only
when every part but the last has that size, as every common uploader makes them. Objects encrypted with
SSE-KMS or SSE-C have ETags that are no MD5 at all; their size is all that can be checked.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

_SINGLE = re.compile(r"[0-9a-f]{32}")
_MULTIPART = re.compile(r"([0-9a-f]{32})-([1-9][0-9]*)")
NOT_MD5_ENCRYPTION = frozenset({"aws:kms", "aws:kms:dsse"})


@dataclass(frozen=True)
class EtagForm:
    md5: str
    parts: int | None  # None: single-part upload


def parse_etag(etag: str) -> EtagForm | None:
    """The MD5 an ETag carries and its part count; None for ETags of another form."""
    etag = etag.lower()
    if _SINGLE.fullmatch(etag):
        return EtagForm(etag, None)
    if match := _MULTIPART.fullmatch(etag):
        return EtagForm(match[1], int(match[2]))
    return None


def md5_based(server_side_encryption: str | None, customer_key: bool) -> bool:
    return not customer_key and server_side_encryption not in NOT_MD5_ENCRYPTION


def uniform_parts(size: int, part_size: int, parts: int) -> bool:
    """Whether `parts` parts of `part_size` bytes (the last one shorter) make up `size` bytes."""
    return part_size > 0 and math.ceil(size / part_size) == parts


class EtagDigest:
    """Fed an object's bytes in order, says whether they are the object the ETag describes."""

    def __init__(self, form: EtagForm, part_size: int | None = None) -> None:
        if form.parts is not None and not part_size:
            raise ValueError("a multipart ETag needs the part size")
        self.form = form
        self._part_size = part_size if form.parts is not None else None
        self._part = hashlib.md5(usedforsecurity=False)
        self._part_fill = 0
        self._part_digests: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            room = len(view) if self._part_size is None else self._part_size - self._part_fill
            self._part.update(view[:room])
            self._part_fill += min(room, len(view))
            view = view[room:]
            if self._part_fill == self._part_size:
                self._close_part()

    def _close_part(self) -> None:
        self._part_digests.append(self._part.digest())
        self._part = hashlib.md5(usedforsecurity=False)
        self._part_fill = 0

    def hexdigest(self) -> str:
        """The ETag's MD5 part as these bytes give it."""
        if self._part_size is None:
            return self._part.hexdigest()
        digests = self._part_digests + ([self._part.digest()] if self._part_fill else [])
        return hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()

    def matches(self) -> bool:
        return self.hexdigest() == self.form.md5
