"""Where adapters come from: `--lora-modules` in vLLM's two forms, its variable, and the `--lora-list` file."""

import json

import pytest

from moe_runtime.adapters.sources import (
    AdapterSource,
    SourceError,
    parse_lora_list,
    parse_lora_module,
    parse_lora_modules_variable,
)


def test_lora_modules_take_vllms_two_forms():
    assert parse_lora_module("sql=/adapters/sql") == AdapterSource("sql", "/adapters/sql")
    as_json = '{"name": "sql", "path": "/adapters/sql", "base_model_name": "base"}'
    assert parse_lora_module(as_json) == AdapterSource("sql", "/adapters/sql")


@pytest.mark.parametrize(
    "text", ["sql", "=/p", "sql=", '{"name": "sql"}', '{"name": 3, "path": "/p"}', "{nope"]
)
def test_malformed_lora_modules_are_refused(text):
    with pytest.raises(SourceError):
        parse_lora_module(text)


def test_the_variable_takes_a_json_list_or_whitespace_separated_items():
    expected = [AdapterSource("a", "/x/a"), AdapterSource("b", "/x/b")]
    assert parse_lora_modules_variable("a=/x/a  b=/x/b\n") == expected
    assert parse_lora_modules_variable('["a=/x/a", {"name": "b", "path": "/x/b"}]') == expected
    assert parse_lora_modules_variable('{"name": "a", "path": "/x/a"}') == expected[:1]
    assert parse_lora_modules_variable("  ") == []


def test_the_list_file_skips_bad_entries_and_repeated_names_and_keeps_the_rest():
    text = json.dumps(
        [
            {"name": "a", "path": "/x/a"},
            {"name": "", "path": "/x/empty"},
            "b=/x/b",
            {"name": "a", "path": "/x/other"},
            {"name": "c", "path": "/x/c", "comment": "extra keys are fine"},
        ]
    )
    entries, problems = parse_lora_list(text)
    assert entries == [AdapterSource("a", "/x/a"), AdapterSource("c", "/x/c")]
    assert problems == [
        "entry 1: name must be a non-empty string",
        "entry 2: expected an object with name and path",
        "entry 3: the name 'a' is listed already; the first one counts",
    ]
    assert parse_lora_list("") == ([], [])


@pytest.mark.parametrize("text", ['{"name": "a", "path": "/p"}', "[", "3"])
def test_a_list_file_that_is_no_list_is_refused_as_a_whole(text):
    with pytest.raises(SourceError):
        parse_lora_list(text)
