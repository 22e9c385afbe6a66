"""Streaming text assembly: whole characters only, cut at stop strings, equal to one full decode."""

from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime.api.detokenizer import MAX_HELD_TOKENS, TextAssembler
from moe_runtime.api.stop_matcher import StopMatcher


class ByteTokenizer:
    """One token per UTF-8 byte, so a character can span several tokens."""

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def ids(text: str) -> list[int]:
    return list(text.encode())


def stream(text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TextAssembler]:
    assembler = TextAssembler(ByteTokenizer(), stop)
    deltas = [assembler.add([token]) for token in ids(text)]
    deltas.append(assembler.finish())
    return [d for d in deltas if d], assembler


def test_multibyte_characters_are_never_split():
    deltas, assembler = stream("héllo €")
    assert "".join(deltas) == "héllo €" == assembler.text
    assert all("\ufffd" not in d for d in deltas)


def test_text_stops_before_the_stop_string_and_never_shows_its_start():
    deltas, assembler = stream("one two STOP three", stop=("STOP",))
    assert "".join(deltas) == "one two " and assembler.stopped
    assert not any("S" in d for d in deltas)


def test_a_false_start_of_a_stop_string_is_released_later():
    deltas, assembler = stream("a ST b", stop=("STOP",))
    assert "".join(deltas) == "a ST b" and not assembler.stopped


def test_earliest_of_several_stop_strings_wins():
    _, assembler = stream("xx END yy STOP", stop=("STOP", "END"))
    assert assembler.text == "xx "


def test_nothing_is_added_after_a_stop():
    assembler = TextAssembler(ByteTokenizer(), ("!",))
    assert assembler.add(ids("hi!")) == "hi"
    assert assembler.add(ids("more")) == "" and assembler.finish() == ""


def test_without_streaming_or_stop_strings_the_text_comes_whole_at_the_end():
    assembler = TextAssembler(ByteTokenizer(), incremental=False)
    assert [assembler.add([token]) for token in ids("héllo")] == [""] * len(ids("héllo"))
    assert assembler.finish() == "héllo" == assembler.text


class CountingByteTokenizer(ByteTokenizer):
    def __init__(self) -> None:
        self.decoded_ids = 0

    def decode(self, ids: list[int]) -> str:
        self.decoded_ids += len(ids)
        return super().decode(ids)


def reference_cut(text: str, stops: list[str], include: bool = False, stop_from: int = 0) -> tuple[str, bool]:
    """Read one character at a time; stop at the first stop string to complete (the longest when several
    complete at once) at character `stop_from` or later, cutting the text where it begins (`include`: where
    it ends)."""
    stops = [s for s in stops if s]
    for end in range(stop_from + 1, len(text) + 1):
        complete = [len(s) for s in stops if text[:end].endswith(s)]
        if complete:
            return text[: end if include else end - max(complete)], True
    return text, False


ALPHABET = "ab€\n"
texts = st.text(alphabet=ALPHABET, max_size=60)
stop_lists = st.lists(st.text(alphabet=ALPHABET, max_size=5), max_size=4)


def chunked(data: st.DataObject, items: list) -> list[list]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(items)), max_size=len(items))))
    return [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(text=texts, stops=stop_lists, data=st.data())
def test_stop_matching_in_pieces_equals_reading_the_whole_text_one_character_at_a_time(text, stops, data):
    matcher = StopMatcher(tuple(stops))
    released = "".join(matcher.feed("".join(piece)) for piece in chunked(data, list(text)))
    released += matcher.finish()
    assert (released, matcher.stopped) == reference_cut(text, stops)


@settings(max_examples=300, deadline=None)
@given(text=texts, stops=stop_lists, incremental=st.booleans(), data=st.data())
def test_streamed_text_equals_the_reference_however_the_tokens_arrive(text, stops, incremental, data):
    assembler = TextAssembler(ByteTokenizer(), tuple(stops), incremental)
    deltas = []
    for piece in chunked(data, ids(text)):
        deltas.append(assembler.add(piece))
        assert "\ufffd" not in deltas[-1]  # never half a character
    deltas.append(assembler.finish())
    expected, stopped = reference_cut(text, stops)
    assert ("".join(deltas), assembler.text, assembler.stopped) == (expected, expected, stopped)


def test_decoding_stays_linear_when_the_model_emits_broken_characters():
    tokenizer = CountingByteTokenizer()
    assembler = TextAssembler(tokenizer, ("never",))
    for _ in range(4000):
        assembler.add([0x80])  # a continuation byte with no start: never a whole character
    assembler.finish()
    # each add decodes the previous segment and the held tokens, each at most MAX_HELD_TOKENS long, and
    # finish decodes everything once: linear (holding every token back would decode 16 million ids here)
    assert tokenizer.decoded_ids <= 4000 * (3 * MAX_HELD_TOKENS + 1) + 4000


@settings(max_examples=300, deadline=None)
@given(text=texts, stops=stop_lists, include=st.booleans(), data=st.data())
def test_include_and_min_tokens_cut_as_the_reference_however_the_text_arrives(text, stops, include, data):
    """vLLM's include_stop_str_in_output keeps the stop string; its min_tokens lets no stop string complete
    in the text of the first tokens (here: characters), though one may begin there."""
    stop_from = data.draw(st.integers(0, len(text)))
    matcher = StopMatcher(tuple(stops), include)
    pieces = chunked(data, list(text[:stop_from])) + chunked(data, list(text[stop_from:]))
    released, fed = "", 0
    for piece in pieces:
        released += matcher.feed("".join(piece), can_stop=fed >= stop_from)
        fed += len(piece)
    released += matcher.finish()
    expected, stopped = reference_cut(text, stops, include, stop_from)
    assert (released, matcher.stopped) == (expected, stopped)
    if stopped:
        assert matcher.matched in stops and (expected.endswith(matcher.matched) or not include)


class SpecialByteTokenizer(ByteTokenizer):
    """Bytes, and id 256 a special token."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        parts = [b"<eos>" if t == 256 else bytes([t]) for t in ids if t != 256 or not skip_special_tokens]
        return b"".join(parts).decode("utf-8", errors="replace")


def test_special_tokens_show_only_without_skip_special_tokens():
    for skip, expected in ((True, "ab"), (False, "a<eos>b")):
        assembler = TextAssembler(SpecialByteTokenizer(), skip_special_tokens=skip)
        text = "".join(assembler.add([t]) for t in (97, 256, 98)) + assembler.finish()
        assert text == expected
