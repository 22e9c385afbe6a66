"""Streaming text assembly: whole characters only, cut at stop strings, equal to one full decode."""

from moe_runtime.detokenizer import TextAssembler


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
