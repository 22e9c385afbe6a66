"""Generated token ids to text deltas for streaming, cut at the first stop string (see `StopMatcher`)."""

from __future__ import annotations

import functools

from moe_runtime.api.stop_matcher import StopMatcher

INCOMPLETE_CHARACTER = "\ufffd"
# A text that still ends in half a character after this many more tokens is not waiting for the rest of a
# character: it is broken (a model emitting stray bytes). Holding it back longer would make each decode
# longer than the last, quadratic in the output.
MAX_HELD_TOKENS = 64


class TextAssembler:
    """Feeds ids in with `add`, gets text that is safe to show: never half of a multi-byte character, never
    the start of what may become a stop string. `finish` returns the rest. `stopped` turns true when a stop
    string appeared; the text ends before it. With `incremental` false and no stop strings nobody looks at
    the text before the end, so `add` only collects ids and `finish` decodes once. Linear in the output.
    `include_stop` keeps the stop string in the text; `skip_special_tokens` false shows special tokens."""

    def __init__(
        self,
        tokenizer,
        stop: tuple[str, ...] = (),
        incremental: bool = True,
        include_stop: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        self._decode = (
            tokenizer.decode
            if skip_special_tokens
            else functools.partial(tokenizer.decode, skip_special_tokens=False)
        )
        self._matcher = StopMatcher(stop, include_stop)
        self._decode_as_we_go = incremental or any(stop)
        self._ids: list[int] = []
        # Decoding only the tail keeps streaming linear; the previous segment gives the decoder its context
        # (leading-space rules differ at the start of a text).
        self._prefix_offset = 0
        self._read_offset = 0
        self._decoded: list[str] = []  # text handed to the matcher, in pieces
        self._released: list[str] = []

    @property
    def stopped(self) -> bool:
        return self._matcher.stopped

    @property
    def stop_string(self) -> str | None:
        return self._matcher.matched

    @property
    def text(self) -> str:
        """What has been released so far."""
        return "".join(self._released)

    def add(self, ids: list[int], can_stop: bool = True) -> str:
        """`can_stop` false: no stop string may complete in the text these ids bring (vLLM's min_tokens)."""
        if self.stopped:
            return ""
        self._ids.extend(ids)
        if not self._decode_as_we_go:
            return ""
        return self._release(self._matcher.feed(self._new_text(), can_stop))

    def finish(self) -> str:
        if self.stopped:
            return ""
        full = self._decode(self._ids)
        decoded = "".join(self._decoded)
        rest = full[len(decoded) :] if full.startswith(decoded) else ""
        return self._release(self._matcher.feed(rest) + self._matcher.finish())

    def _new_text(self) -> str:
        before = self._decode(self._ids[self._prefix_offset : self._read_offset])
        after = self._decode(self._ids[self._prefix_offset :])
        held_tokens = len(self._ids) - self._read_offset
        if len(after) <= len(before):
            return ""
        if after.endswith(INCOMPLETE_CHARACTER) and held_tokens < MAX_HELD_TOKENS:
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._decoded.append(after[len(before) :])
        return self._decoded[-1]

    def _release(self, text: str) -> str:
        if text:
            self._released.append(text)
        return text
