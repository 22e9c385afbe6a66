"""`serve` options: flags, the environment variables the operator sets, and their precedence."""

import sys

import pytest

from moe_runtime.serve import command as serve
from moe_runtime.serve.command import OPTIONS, parse_args


def test_environment_supplies_every_option_and_flags_win():
    env = {"MOE_RUNTIME_MODEL": "/models/a", "MOE_RUNTIME_MAX_QUEUE": "7", "MOE_RUNTIME_SCHEDULE_POLICY": "fcfs",
           "MOE_RUNTIME_WINDOW": "1024", "MOE_RUNTIME_QUANTIZE": "int8", "MOE_RUNTIME_REQUEST_TIMEOUT": "2.5"}  # fmt: skip
    args = parse_args(["--max-queue", "9"], env)
    assert (args.model, args.max_queue, args.schedule_policy) == ("/models/a", 9, "fcfs")
    assert (args.window, args.quantize, args.request_timeout) == (1024, "int8", 2.5)


def test_defaults_and_empty_variables():
    args = parse_args(["--model", "m"], {"MOE_RUNTIME_MAX_BATCH_SEQS": ""})
    assert (args.max_batch_seqs, args.max_batch_tokens, args.port, args.window) == (32, None, 8000, None)


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        ([], {}),
        (["--model", "m"], {"MOE_RUNTIME_MAX_QUEUE": "lots"}),
        (["--model", "m"], {"MOE_RUNTIME_MAX_QUEUE": "0"}),
        (["--model", "m"], {"MOE_RUNTIME_SCHEDULE_POLICY": "random"}),
        (["--model", "m", "--max-batch-seqs", "64", "--max-batch-tokens", "32"], {}),
    ],
)
def test_nonsense_is_refused_at_startup(argv, env):
    with pytest.raises(SystemExit):
        parse_args(argv, env)


def test_every_option_has_its_own_variable():
    assert len({o.env for o in OPTIONS}) == len(OPTIONS)
    assert all(o.env.startswith("MOE_RUNTIME_") for o in OPTIONS)


def docstring_table() -> list[list[str]]:
    rows = [line for line in serve.__doc__.splitlines() if line.startswith("| --")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_the_docstring_table_lists_every_option_with_its_variable_and_default():
    table = {row[1]: row for row in docstring_table()}
    assert set(table) == {o.env for o in OPTIONS}
    for option in OPTIONS:
        flags, _, default, meaning = table[option.env]
        assert flags.split(", ") == list(option.all_flags)
        assert default == option.shown_default() and meaning


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"], {})
    text = " ".join(capsys.readouterr().out.split())
    for option in OPTIONS:
        assert f"(default: {' '.join(option.shown_default().split())}) [env {option.env}]" in text


def test_vllm_names_and_the_older_names_set_the_same_options():
    vllm = parse_args(["--model", "m", "--max-num-seqs", "3", "--max-num-batched-tokens", "40",
                       "--max-model-len", "128", "--gpu-memory-utilization", "0.5", "--dtype", "auto"], {})  # fmt: skip
    older = parse_args(["--model", "m", "--max-batch-seqs", "3", "--max-batch-tokens", "40"], {})
    assert (
        (vllm.max_batch_seqs, vllm.max_batch_tokens)
        == (older.max_batch_seqs, older.max_batch_tokens)
        == (3, 40)
    )
    assert (vllm.max_model_len, vllm.gpu_memory_utilization, vllm.dtype) == (128, 0.5, "auto")


@pytest.mark.parametrize(
    "env",
    [
        {"MOE_RUNTIME_GPU_MEMORY_UTILIZATION": "1.5"},
        {"MOE_RUNTIME_GPU_MEMORY_UTILIZATION": "0"},
        {"MOE_RUNTIME_EXPERT_METRICS": "some"},
        {"MOE_RUNTIME_LOG_FORMAT": "xml"},
        {"MOE_RUNTIME_MAX_REQUEST_BYTES": "0"},
    ],
)
def test_new_options_refuse_nonsense(env):
    with pytest.raises(SystemExit):
        parse_args(["--model", "m"], env)


def test_json_logs_are_one_object_per_line_with_the_traceback():
    import json
    import logging

    from moe_runtime.logs import JsonFormatter

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, "f", 1, "failed %s", ("a",), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["level"], entry["logger"], entry["message"]) == ("error", "x", "failed a")
    assert "RuntimeError: boom" in entry["exception"] and "\n" not in JsonFormatter().format(record)


def test_the_token_budget_follows_the_device_unless_set():
    from types import SimpleNamespace

    from moe_runtime.serve.command import resolve_token_budget

    def engine(kind):
        return SimpleNamespace(device=SimpleNamespace(type=kind))

    def args(**given):
        return SimpleNamespace(**{"max_batch_tokens": None, "max_batch_seqs": 32, **given})

    assert resolve_token_budget(args(), engine("cuda")) == 8192
    assert resolve_token_budget(args(), engine("cpu")) == 512
    assert resolve_token_budget(args(max_batch_seqs=1024), engine("cpu")) == 1024
    assert resolve_token_budget(args(max_batch_tokens=64), engine("cuda")) == 64


def test_lora_options_from_flags_and_from_the_environment():
    from moe_runtime.adapters.sources import AdapterSource

    args = parse_args(["--model", "m"], {})
    assert (args.lora_modules, args.lora_list, args.max_loras, args.max_lora_rank) == ([], None, 4, 16)
    env = {
        "MOE_RUNTIME_MODEL": "m",
        "MOE_RUNTIME_LORA_MODULES": "a=/x/a b=/x/b",
        "MOE_RUNTIME_LORA_LIST": "/etc/adapters.json",
        "MOE_RUNTIME_MAX_LORAS": "4",
        "MOE_RUNTIME_MAX_LORA_RANK": "64",
    }
    args = parse_args([], env)
    assert args.lora_modules == [AdapterSource("a", "/x/a"), AdapterSource("b", "/x/b")]
    assert (args.lora_list, args.max_loras, args.max_lora_rank) == ("/etc/adapters.json", 4, 64)
    flags = ["--lora-modules", "c=/y/c", '{"name": "d", "path": "/y/d"}', "--lora-modules", "e=/y/e"]
    args = parse_args(flags, env)
    assert [m.name for m in args.lora_modules] == ["c", "d", "e"], "the flags win over the variable"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--model", "m", "--lora-modules", "nopath"], {}),
        (["--model", "m", "--lora-modules", "a=/x", "a=/y"], {}),
        (["--model", "m"], {"MOE_RUNTIME_LORA_MODULES": "[nope"}),
        (["--model", "m", "--max-loras", "0"], {}),
    ],
)
def test_bad_lora_options_are_refused_at_startup(argv, env):
    with pytest.raises(SystemExit):
        parse_args(argv, env)


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, True),
        (["--no-enable-prefix-caching"], {}, False),
        ([], {"MOE_RUNTIME_ENABLE_PREFIX_CACHING": "false"}, False),
        (["--enable-prefix-caching"], {"MOE_RUNTIME_ENABLE_PREFIX_CACHING": "0"}, True),
        ([], {"MOE_RUNTIME_ENABLE_PREFIX_CACHING": ""}, True),
    ],
)
def test_prefix_caching_is_a_switch_with_vllms_flags(argv, env, expected):
    assert parse_args(["--model", "m", *argv], env).enable_prefix_caching is expected


def test_a_switch_variable_that_is_not_true_or_false_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "m"], {"MOE_RUNTIME_ENABLE_PREFIX_CACHING": "maybe"})
    assert "MOE_RUNTIME_ENABLE_PREFIX_CACHING" in capsys.readouterr().err
