"""Generated token ids to text deltas for streaming, cut at the first stop string."""

from __future__ import annotations

INCOMPLETE_CHARACTER = "\ufffd"


class TextAssembler:
    """Feeds ids in with `add`, gets text that is safe to show: never half of a multi-byte character, never
    the start of what may become a stop string. `finish` returns the rest. `stopped` turns true when a stop
    string appeared; the text ends before it. With `incremental` false and no stop strings nobody looks at
    the text before the end, so `add` only collects ids and `finish` decodes once."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = (), incremental: bool = True) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._decode_as_we_go = incremental or bool(self._stop)
        self._ids: list[int] = []
        # Decoding only the tail keeps streaming linear; the previous segment gives the decoder its context
        # (leading-space rules differ at the start of a text).
        self._prefix_offset = 0
        self._read_offset = 0
        self._text = ""
        self._emitted = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """What has been released so far."""
        return self._text[: self._emitted]

    def add(self, ids: list[int]) -> str:
        if self.stopped:
            return ""
        self._ids.extend(ids)
        if not self._decode_as_we_go:
            return ""
        before = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        after = self._tokenizer.decode(self._ids[self._prefix_offset :])
        if len(after) > len(before) and not after.endswith(INCOMPLETE_CHARACTER):
            self._text += after[len(before) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        if not self.stopped:
            full = self._tokenizer.decode(self._ids)
            if full.startswith(self.text):
                self._text = full
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        end = len(self._text)
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            end = cut
        elif not final:
            end -= self._possible_stop_prefix()
        delta = self._text[self._emitted : end] if end > self._emitted else ""
        self._emitted = max(self._emitted, end)
        return delta

    def _first_stop(self) -> int | None:
        # A stop string can only newly appear in text that has not been released yet.
        start = max(0, self._emitted - max((len(s) for s in self._stop), default=0))
        hits = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
        return min(hits, default=None)

    def _possible_stop_prefix(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
