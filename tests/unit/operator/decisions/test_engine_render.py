"""The pods of engine vllm and sglang: each spec setting on the engine's command line, TP/EP/DP from the pod's GPUs,
probes, shared memory, shutdown, the S3 download init container and the adapter sidecar."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_operator.decisions.engine_args import parallel_sizes
from moe_operator.decisions.images import EngineImages, default_images
from moe_operator.decisions.render import pod_template
from moe_operator.decisions.sglang_args import sglang_args
from moe_operator.decisions.spec import parse_spec
from moe_operator.decisions.vllm_args import vllm_args
from tests.unit.operator.samples import OWNER, render_children, spec


def vllm(**overrides):
    return spec(runtime__engine="vllm", runtime__image="vllm/vllm-openai:v0.32.0", **overrides)


def sglang(**overrides):
    return spec(runtime__engine="sglang", runtime__image="lmsysorg/sglang:v0.5.23", **overrides)


def flags(args: list[str]) -> dict[str, str | None]:
    """`--flag value` and bare `--flag` of a command line, by flag (the model path is not a flag)."""
    out: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            following = args[i + 1] if i + 1 < len(args) else None
            out[arg] = None if following is None or following.startswith("--") else following
    return out


def test_the_default_vllm_command_line():
    assert vllm_args(parse_spec(vllm()), "qwen") == [
        "/models/qwen3",
        "--served-model-name", "qwen",
        "--max-num-seqs", "32",
        "--long-prefill-token-threshold", "512",
        "--max-num-queued-reqs", "288",
        "--shutdown-timeout", "300",
        "--tensor-parallel-size", "1",
        "--gpu-memory-utilization", "0.9",
    ]  # fmt: skip


# (id, spec overrides, flags that must be there with their values, flags that must not)
VLLM_CASES = [
    ("served-name", {"model__name": "qwen3-30b-a3b"}, {"--served-model-name": "qwen3-30b-a3b"}, []),
    ("four-gpus-tensor-parallel", {"runtime__resources": {"gpu": 4}}, {"--tensor-parallel-size": "4"},
     ["--data-parallel-size", "--enable-expert-parallel"]),
    ("eight-gpus-tp-and-ep", {"runtime__resources": {"gpu": 8}, "runtime__parallelism": {"expertParallel": True}},
     {"--tensor-parallel-size": "8", "--enable-expert-parallel": None}, ["--data-parallel-size"]),
    ("eight-gpus-dp2-ep", {"runtime__resources": {"gpu": 8},
                           "runtime__parallelism": {"dataParallelSize": 2, "expertParallel": True}},
     {"--tensor-parallel-size": "4", "--data-parallel-size": "2", "--enable-expert-parallel": None,
      "--max-num-queued-reqs": str(256 + 2 * 32)}, []),
    ("cpu-pod", {"runtime__resources": {"gpu": 0}}, {"--tensor-parallel-size": "1"}, []),
    ("batching", {"runtime__batching": {"maxQueue": 10, "maxBatchSequences": 4, "tokenBudget": 2048,
                                        "prefillChunk": 256, "requestTimeoutSeconds": 60}},
     {"--max-num-seqs": "4", "--max-num-batched-tokens": "2048", "--long-prefill-token-threshold": "256",
      "--max-num-queued-reqs": "14", "--shutdown-timeout": "60"}, []),
    ("context-and-dtype", {"runtime__maxModelLen": 32768, "runtime__dtype": "bfloat16"},
     {"--max-model-len": "32768", "--dtype": "bfloat16"}, []),
    ("dtype-auto-is-vllms-own", {"runtime__dtype": "auto"}, {}, ["--dtype"]),
    ("int8", {"runtime__quantization": "int8"}, {"--quantization": "int8_per_channel_weight_only"}, []),
    ("kv-bytes", {"runtime__kvCache": {"memoryBytes": 8 * 2**30}}, {"--kv-cache-memory-bytes": str(8 * 2**30)},
     ["--gpu-memory-utilization"]),
    ("kv-fraction", {"runtime__kvCache": {"gpuMemoryUtilization": 0.85}}, {"--gpu-memory-utilization": "0.85"},
     ["--kv-cache-memory-bytes"]),
    ("no-adapters-no-lora", {}, {}, ["--enable-lora", "--max-loras", "--max-lora-rank"]),
    ("adapters-enable-lora", {"adapters": [{"name": "sql", "source": {"pvc": {"claimName": "weights", "path": "a"}}}],
                              "runtime__maxLoras": 3, "runtime__maxLoraRank": 64},
     {"--enable-lora": None, "--max-loras": "3", "--max-lora-rank": "64"}, ["--lora-modules"]),
    ("s3-from-the-download-folder", {"model__source": {"uri": "s3://weights/qwen3/30b/", "cache": {"sizeLimit": "80Gi"}}}, {}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "present", "absent"), [c[1:] for c in VLLM_CASES], ids=[c[0] for c in VLLM_CASES]
)
def test_vllm_flags_follow_the_spec(overrides, present, absent):
    args = vllm_args(parse_spec(vllm(**overrides)), OWNER.name)
    found = flags(args)
    assert {flag: found.get(flag, "<absent>") for flag in present} == present
    assert [flag for flag in absent if flag in found] == []
    assert len([a for a in args if a.startswith("--")]) == len(found), "no flag twice"


def test_vllm_reads_an_s3_checkpoint_from_where_the_download_puts_it():
    args = vllm_args(
        parse_spec(vllm(model__source={"uri": "s3://weights/qwen3/30b/", "cache": {"sizeLimit": "80Gi"}})),
        OWNER.name,
    )
    assert args[0] == "/var/cache/moe-runtime/model"  # the link the download makes to its copy


def test_user_args_come_last_so_they_win():
    args = vllm_args(parse_spec(vllm(runtime__args=["--max-num-seqs", "256", "--enforce-eager"])), "m")
    assert args[-3:] == ["--max-num-seqs", "256", "--enforce-eager"]
    assert args.index("--max-num-seqs") < len(args) - 3


@given(
    gpus=st.integers(min_value=0, max_value=16),
    data=st.integers(min_value=1, max_value=16),
    expert=st.booleans(),
)
def test_parallel_sizes_always_use_every_gpu_of_the_pod(gpus, data, expert):
    if data > 1 and (gpus < data or gpus % data):
        return  # the CRD refuses it
    raw = vllm(
        runtime__resources={"gpu": gpus},
        runtime__parallelism={"dataParallelSize": data, "expertParallel": expert},
    )
    sizes = parallel_sizes(parse_spec(raw))
    assert sizes.tensor * sizes.data == max(gpus, 1)
    found = flags(vllm_args(parse_spec(raw), "m"))
    assert found["--tensor-parallel-size"] == str(sizes.tensor)
    assert found.get("--data-parallel-size") == (str(data) if data > 1 else None)
    assert ("--enable-expert-parallel" in found) == expert


def test_the_default_sglang_command_line():
    assert sglang_args(parse_spec(sglang()), "qwen") == [
        "--model-path", "/models/qwen3",
        "--served-model-name", "qwen",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--enable-metrics",
        "--max-running-requests", "32",
        "--max-queued-requests", "256",
        "--chunked-prefill-size", "512",
        "--tp-size", "1",
        "--mem-fraction-static", "0.9",
    ]  # fmt: skip


SGLANG_CASES = [
    ("eight-gpus-dp2-ep", {"runtime__resources": {"gpu": 8},
                           "runtime__parallelism": {"dataParallelSize": 2, "expertParallel": True}},
     {"--tp-size": "4", "--dp-size": "2", "--ep-size": "4"}, []),
    ("tokens", {"runtime__kvCache": {"maxTokens": 100000}, "runtime__batching": {"tokenBudget": 8192},
                "runtime__maxModelLen": 4096},
     {"--max-total-tokens": "100000", "--max-prefill-tokens": "8192", "--context-length": "4096"},
     ["--mem-fraction-static"]),
    ("adapters", {"adapters": [{"name": "sql", "source": {"image": {"path": "/a/sql"}}}], "runtime__maxLoras": 2},
     {"--enable-lora": None, "--max-loras-per-batch": "2", "--max-lora-rank": "16", "--lora-target-modules": "all"},
     []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "present", "absent"), [c[1:] for c in SGLANG_CASES], ids=[c[0] for c in SGLANG_CASES]
)
def test_sglang_flags_follow_the_spec(overrides, present, absent):
    found = flags(sglang_args(parse_spec(sglang(**overrides)), OWNER.name))
    assert {flag: found.get(flag, "<absent>") for flag in present} == present
    assert [flag for flag in absent if flag in found] == []


@pytest.mark.parametrize("raw", [vllm(), sglang()], ids=["vllm", "sglang"])
def test_engine_pod(raw):
    children = render_children(raw)
    pod = children.deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] in (["vllm", "serve"], ["python3", "-m", "sglang.launch_server"])
    assert container["image"] == raw["runtime"]["image"]
    assert "envFrom" not in container and children.config_map["data"] == {}
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    # the drain (--shutdown-timeout), the preStop sleep before it, and vLLM's teardown after it
    assert pod["terminationGracePeriodSeconds"] == 300 + 10 + 15
    assert "initContainers" not in pod
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert {"name": "HOME", "value": "/tmp"} in container["env"]


def test_shared_memory_grows_with_the_gpus_unless_set():
    def shm(raw):
        pod = render_children(raw).deployment["spec"]["template"]["spec"]
        return {v["name"]: v for v in pod["volumes"]}["shm"]["emptyDir"]["sizeLimit"]

    assert shm(vllm(runtime__resources={"gpu": 8})) == "9Gi"
    assert shm(vllm(runtime__shmSize="32Gi")) == "32Gi"
    moe_runtime = render_children(spec()).deployment["spec"]["template"]["spec"]
    assert "shm" not in {v["name"] for v in moe_runtime["volumes"]}, "our runtime keeps the default"


def test_a_spec_without_image_runs_the_configured_image_of_its_engine():
    images = EngineImages(default_images("1.2.3")).with_overrides(["vllm=registry.local/vllm:9"])
    raw = vllm()
    del raw["runtime"]["image"]
    template = pod_template("m", parse_spec(raw), images)
    assert template["spec"]["containers"][0]["image"] == "registry.local/vllm:9"
    raw = spec()
    del raw["runtime"]["image"]
    assert pod_template("m", parse_spec(raw), images)["spec"]["containers"][0]["image"] == (
        "ghcr.io/moedeploy/runtime:1.2.3"
    )
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        images.with_overrides(["tgi=x"])


def test_s3_checkpoint_is_downloaded_by_an_init_container_with_the_credentials():
    raw = vllm(
        model__source={
            "uri": "s3://weights/qwen3",
            "s3": {"endpoint": "http://minio:9000", "credentialsSecret": "s3-creds"},
            "cache": {"hostPath": {"path": "/var/cache/models"}},
        }
    )
    pod = pod_template("m", parse_spec(raw), EngineImages(default_images("1.2.3")))["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "ghcr.io/moedeploy/runtime:1.2.3"
    assert init["command"] + init["args"] == [
        "python", "-m", "moe_runtime", "download",
        "--model", "s3://weights/qwen3", "--download-dir", "/var/cache/moe-runtime",
        "--link", "/var/cache/moe-runtime/model",
    ]  # fmt: skip
    env = {var["name"]: var for var in init["env"]}
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    (engine,) = pod["containers"]
    assert engine["args"][0] == "/var/cache/moe-runtime/model"
    assert not any(var["name"].startswith("AWS_") for var in engine["env"]), "only the download needs them"
    mount = {"name": "model-cache", "mountPath": "/var/cache/moe-runtime"}
    assert mount in init["volumeMounts"] and mount in engine["volumeMounts"]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_adapters_add_the_sync_sidecar_that_reads_the_list(engine):
    raw = (vllm if engine == "vllm" else sglang)(
        adapters=[{"name": "sql", "source": {"hostPath": {"path": "/data/loras/sql"}}}]
    )
    pod = pod_template("m", parse_spec(raw), EngineImages(default_images("1.2.3")))["spec"]
    server, sidecar = pod["containers"]
    assert sidecar["name"] == "adapter-sync" and sidecar["image"] == "ghcr.io/moedeploy/runtime:1.2.3"
    assert sidecar["command"] == ["python", "-m", "moe_runtime", "adapter-sync"]
    assert flags(sidecar["args"]) == {
        "--engine": engine,
        "--engine-url": "http://127.0.0.1:8000",
        "--lora-list": "/etc/moe-runtime/adapters/adapters.json",
    }
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "adapter-sync"}
    assert {m["mountPath"] for m in sidecar["volumeMounts"]} == {"/etc/moe-runtime/adapters"}
    # the engine reads the adapters' folders, not the list
    server_mounts = {m["mountPath"] for m in server["volumeMounts"]}
    assert "/etc/moe-runtime/adapters" not in server_mounts
    assert any(path.startswith("/adapters/adapter-host-") for path in server_mounts)
    runtime_lora = {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}
    assert (runtime_lora in server["env"]) == (engine == "vllm")


def test_adding_an_adapter_to_a_list_changes_no_vllm_pod_but_the_first_one_does():
    one = [{"name": "a", "source": {"hostPath": {"path": "/data/loras/a"}}}]
    two = [*one, {"name": "b", "source": {"hostPath": {"path": "/data/loras/b"}}}]
    revisions = [render_children(vllm(adapters=adapters)).revision for adapters in ([], one, two)]
    assert revisions[0] != revisions[1], "LoRA is a start-up setting of vLLM"
    assert revisions[1] == revisions[2], "the sidecar loads the second one into the running pods"


def test_the_gpu_example_runs_tensor_and_expert_parallel_vllm_on_eight_gpus():
    import yaml

    from tests.paths import ROOT

    raw = yaml.safe_load((ROOT / "examples" / "qwen3-moe-vllm.yaml").read_text())["spec"]
    pod = pod_template("qwen3-235b", parse_spec(raw))["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith("vllm/vllm-openai:"), "the chart's vLLM image"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    found = flags(container["args"])
    assert (found["--tensor-parallel-size"], found["--served-model-name"]) == ("8", "qwen3-235b-a22b")
    assert "--enable-expert-parallel" in found and "--quantization" not in found
    assert container["args"][0] == "/models/Qwen3-235B-A22B-Instruct-2507-FP8"


def test_the_engines_doc_shows_the_command_line_the_example_renders():
    import yaml

    from tests.paths import ROOT

    raw = yaml.safe_load((ROOT / "examples" / "qwen3-moe-vllm.yaml").read_text())["spec"]
    command = " ".join(["vllm", "serve", *vllm_args(parse_spec(raw), "qwen3-235b")])
    doc = " ".join((ROOT / "docs" / "engines.md").read_text().split())
    assert f"`{command}`" in doc
