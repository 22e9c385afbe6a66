"""The operator configures runtime pods through MOE_RUNTIME_* variables: the runtime must read each one."""

import pytest
import yaml

from moe_operator.decisions.runtime_config import RUNTIME_SETTINGS
from moe_operator.decisions.spec import parse_spec
from moe_runtime.serve.command import OPTIONS, parse_args
from tests.paths import ROOT
from tests.unit.operator.samples import render_children, spec

# the examples whose pods run our runtime (the others run vLLM, whose command line tests/unit/operator/decisions/
# test_engine_render.py and tests/integration/vllm/test_vllm_command_line.py check)
EXAMPLES = sorted(
    path
    for path in (ROOT / "examples").glob("*.yaml")
    if yaml.safe_load(path.read_text())["spec"]["runtime"].get("engine", "moe-runtime") == "moe-runtime"
)


def test_every_variable_the_operator_sets_is_one_the_runtime_reads():
    assert {name for name, _ in RUNTIME_SETTINGS} <= {option.env for option in OPTIONS}


def test_the_flags_refused_in_args_are_every_flag_of_what_the_operator_sets():
    from moe_operator.decisions.runtime_config import OPERATOR_FLAGS

    runtime_flags = {option.env: option.flags for option in OPTIONS}
    assert {name for name, _ in RUNTIME_SETTINGS} <= set(OPERATOR_FLAGS)
    assert {env: runtime_flags[env] for env in OPERATOR_FLAGS} == OPERATOR_FLAGS


def test_the_runtime_takes_no_abbreviated_flags():
    """An abbreviation would slip past a list of exact flags (argparse takes --mod for --model by default)."""
    with pytest.raises(SystemExit):
        parse_args(["--mod", "/etc"], environ={})


@pytest.mark.parametrize(
    "raw",
    [
        *(yaml.safe_load(path.read_text())["spec"] for path in EXAMPLES),
        spec(
            runtime__quantization="int8",
            runtime__dtype="bfloat16",
            runtime__attention={"window": 64, "globalTokens": 4},
        ),
        spec(runtime__batching={"maxQueue": 1, "maxBatchSequences": 1, "tokenBudget": 1, "prefillChunk": 1}),
    ],
    ids=[*(path.stem for path in EXAMPLES), "int8-windowed", "smallest-batching"],
)
def test_the_runtime_accepts_the_config_map_the_operator_renders(raw):
    model_spec = parse_spec(raw)
    config = render_children(raw).config_map["data"]
    # the pod's container runs `serve --model <path>` with the ConfigMap as its environment
    args = parse_args(["--model", config["MOE_RUNTIME_MODEL"]], environ=config)
    batching = model_spec.runtime.batching
    assert args.max_queue == batching.max_queue
    assert args.max_batch_seqs == batching.max_batch_sequences
    assert args.max_batch_tokens == batching.token_budget
    assert args.prefill_chunk == batching.prefill_chunk
    assert args.request_timeout == batching.request_timeout_seconds
    assert args.quantize == model_spec.runtime.quantization
    assert args.window == model_spec.runtime.attention.window
    assert args.port == int(config["MOE_RUNTIME_PORT"])


def test_the_lora_defaults_of_the_crd_are_the_runtimes():
    options = {option.env: option for option in OPTIONS}
    runtime = parse_spec(spec()).runtime
    assert runtime.max_loras == options["MOE_RUNTIME_MAX_LORAS"].default
    assert runtime.max_lora_rank == options["MOE_RUNTIME_MAX_LORA_RANK"].default


def test_the_runtime_reads_the_adapter_list_the_operator_writes(tmp_path):
    import json

    from moe_operator.decisions.render import adapters_config_map
    from moe_runtime.adapters.sources import AdapterSource, parse_lora_list
    from tests.unit.operator.samples import OWNER

    raw = spec(
        adapters=[{"name": "sql", "source": {"pvc": {"claimName": "weights", "path": "loras/sql"}}}],
        runtime__maxLoras=3,
    )
    config = render_children(raw).config_map["data"]
    args = parse_args(["--model", config["MOE_RUNTIME_MODEL"]], environ=config)
    assert args.lora_list == "/etc/moe-runtime/adapters/adapters.json" and args.max_loras == 3
    data = adapters_config_map(OWNER, parse_spec(raw))["data"]
    assert list(data) == [args.lora_list.rsplit("/", 1)[1]]
    assert parse_lora_list(data["adapters.json"]) == ([AdapterSource("sql", "/models/loras/sql")], [])
    assert json.loads(data["adapters.json"]) == [{"name": "sql", "path": "/models/loras/sql"}]
