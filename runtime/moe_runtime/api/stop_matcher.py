"""Finds the first stop string in text that arrives in pieces, in time linear in the text's length.

Semantics (independent of how the text is cut into pieces): the text ends where the first stop string to be
complete begins, reading the text one character at a time; when several complete at the same character, the
longest of them (the one that begins first) wins. That is what a client reading character by character would
see. Text is released as soon as it cannot be the beginning of a stop string. With `include` (vLLM's
`include_stop_str_in_output`) the text ends after the stop string instead. Text fed with `can_stop` false
(vLLM's `min_tokens`: the first tokens may not stop) completes no stop string; one may begin there and
complete later.

An Aho-Corasick automaton over the stop strings: its state is the longest tail of the text read so far that
begins some stop string, which is exactly the text to hold back. Each character costs amortised O(1),
whatever the number and lengths of the stop strings.
"""

from __future__ import annotations

from collections import deque


class StopMatcher:
    def __init__(self, stops: tuple[str, ...], include: bool = False) -> None:
        self._include = include
        self._goto: list[dict[str, int]] = [{}]
        self._depth = [0]  # length of the text a state stands for
        self._match = [0]  # length of the longest stop string that ends in this state, 0 for none
        for stop in dict.fromkeys(s for s in stops if s):
            self._insert(stop)
        self._fail = self._link()
        self._state = 0
        self._held = ""  # the tail of the text read so far that may begin a stop string
        self.stopped = False
        self.matched: str | None = None  # the stop string found

    def feed(self, text: str, can_stop: bool = True) -> str:
        """Reads more text; returns what can be released (nothing once a stop string was found)."""
        if self.stopped or not text:
            return ""
        if len(self._goto) == 1:
            return text
        pending = self._held + text
        offset = len(self._held)
        state = self._state
        for i, char in enumerate(text):
            while state and char not in self._goto[state]:
                state = self._fail[state]
            state = self._goto[state].get(char, 0)
            if self._match[state] and can_stop:
                end = offset + i + 1
                self.stopped = True
                self.matched = pending[end - self._match[state] : end]
                self._held = ""
                return pending[: end if self._include else end - self._match[state]]
        self._state = state
        keep = self._depth[state]
        self._held = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep]

    def finish(self) -> str:
        """The text held back, once no more will come (unless a stop string was found)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _insert(self, stop: str) -> None:
        state = 0
        for char in stop:
            if char not in self._goto[state]:
                self._goto[state][char] = len(self._goto)
                self._goto.append({})
                self._depth.append(self._depth[state] + 1)
                self._match.append(0)
            state = self._goto[state][char]
        self._match[state] = len(stop)

    def _link(self) -> list[int]:
        """Failure links (the longest proper tail of a state's text that is itself a state), breadth first;
        a state's match is the longest stop string ending there, through its failure links too."""
        fail = [0] * len(self._goto)
        queue = deque(self._goto[0].values())
        while queue:
            state = queue.popleft()
            for char, child in self._goto[state].items():
                link = fail[state]
                while link and char not in self._goto[link]:
                    link = fail[link]
                fail[child] = self._goto[link].get(char, 0)
                self._match[child] = max(self._match[child], self._match[fail[child]])
                queue.append(child)
        return fail
