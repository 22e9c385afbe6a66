"""`serve` options: flags, the environment variables the operator sets, and their precedence."""

import pytest

from moe_runtime.serve import OPTIONS, parse_args


def test_environment_supplies_every_option_and_flags_win():
    env = {"MOE_RUNTIME_MODEL": "/models/a", "MOE_RUNTIME_MAX_QUEUE": "7", "MOE_RUNTIME_SCHEDULE_POLICY": "fcfs",
           "MOE_RUNTIME_WINDOW": "1024", "MOE_RUNTIME_QUANTIZE": "int8", "MOE_RUNTIME_REQUEST_TIMEOUT": "2.5"}  # fmt: skip
    args = parse_args(["--max-queue", "9"], env)
    assert (args.model, args.max_queue, args.schedule_policy) == ("/models/a", 9, "fcfs")
    assert (args.window, args.quantize, args.request_timeout) == (1024, "int8", 2.5)


def test_defaults_and_empty_variables():
    args = parse_args(["--model", "m"], {"MOE_RUNTIME_MAX_BATCH_SEQS": ""})
    assert (args.max_batch_seqs, args.max_batch_tokens, args.port, args.window) == (32, 512, 8000, None)


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
