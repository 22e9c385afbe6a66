"""What the vLLM tests share (their fixtures are in conftest.py): vLLM's CPU build (`make vllm`), the checkpoints it
serves, ModelDeployments of engine vllm on the local kubelet's node, and reads of its pods from outside
(targets.json, /proc, HTTP).

Sized for this machine: a vLLM pod is three processes and 4.5-5.5 GB with the 1 GiB KV cache set here; it starts
in 45-85 s on two cores, longer beside a busy one. Tests hold at most two vLLM pods at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from localkubelet import POD_MARKER

from tests.integration.local_stack import local_md
from tests.paths import ROOT

VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"  # what the chart names; the local kubelet runs `make vllm`'s build
# one pod's start: imports, the engine core and worker processes, torch.compile warm-up (36-84 s measured on an
# idle or busy machine, more beside another vLLM pod starting or serving)
START_S = 420
SERVED = "qwen3moe"
MAX_MODEL_LEN = 1024


def require_vllm() -> Path:
    """The environment `make vllm` installs; the test fails (it does not skip) without it."""
    check = subprocess.run(
        ["bash", str(ROOT / "hack" / "ensure-vllm.sh"), "--check"], capture_output=True, text=True, timeout=60
    )
    if check.returncode != 0:
        pytest.fail(f"vLLM's CPU build is not installed: run `make vllm` ({check.stderr.strip()})")
    return Path(check.stdout.strip())


def write_moe_checkpoint(out: Path, layers: int = 4, hidden: int = 512) -> Path:
    """A random Qwen3-MoE vLLM serves on CPU: 4 layers of 16 experts (top 4), head_dim 128, 40 MB in fp32."""
    subprocess.run(
        [sys.executable, "-m", "moe_runtime", "make-checkpoint", "--family", "qwen3_moe", "--out", str(out),
         "--hidden-size", str(hidden), "--num-layers", str(layers), "--num-experts", "16", "--top-k", "4",
         "--vocab-size", "512"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


def write_dense_checkpoint(out: Path) -> Path:
    """The same shape with every MLP dense, as Qwen3ForCausalLM: vLLM's CPU build cannot serve LoRA on an MoE
    model (with LoRA on, its fused-MoE layer takes a Triton kernel that has no CPU backend, and the first request
    kills the engine), so the adapter tests serve this. The operator never reads the checkpoint: vLLM does."""
    subprocess.run(
        [sys.executable, "-m", "moe_runtime", "make-checkpoint", "--family", "qwen3_moe", "--out", str(out),
         "--hidden-size", "512", "--num-layers", "4", "--num-experts", "16", "--top-k", "4", "--vocab-size", "512",
         "--mlp-only-layers", "0", "1", "2", "3"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    config.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=128)
    for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
                "mlp_only_layers", "norm_topk_prob"):  # fmt: skip
        config.pop(key, None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def vllm_md(name: str, model_dir: Path, replicas: int = 1, **runtime) -> dict:
    """A ModelDeployment of engine vllm whose pods run on the local kubelet's node as real vLLM servers."""
    body = local_md(name, {"hostPath": {"path": str(model_dir)}}, replicas)
    body["spec"]["model"]["name"] = SERVED
    body["spec"]["runtime"].update(
        engine="vllm",
        image=VLLM_IMAGE,
        maxModelLen=MAX_MODEL_LEN,
        startupTimeoutSeconds=START_S,
        # a client learns of a deleted pod from targets.json, which the local kubelet rewrites when it sees the
        # deletion: on a busy machine that took over 2 s once, and a request sent meanwhile got a 500
        drainDelaySeconds=5,
        # vLLM's CPU build: a 1 GiB KV cache (2 would do; two pods must fit beside everything else), and the OS
        # placing the model's threads, so that two pods do not both bind core 0
        env=[
            {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"},
            {"name": "VLLM_CPU_OMP_THREADS_BIND", "value": "nobind"},
        ],
        **runtime,
    )
    return body


def pod_urls(targets_file: Path, namespace: str, md: str) -> dict[str, str]:
    """pod -> http://127.0.0.1:PORT of the Ready pods of `md` in targets.json."""
    entries = json.loads(targets_file.read_text())
    return {
        e["labels"]["pod"]: f"http://{e['targets'][0]}"
        for e in entries
        if e["labels"]["namespace"] == namespace and e["labels"]["model_deployment"] == md
    }


def pod_processes(state_dir: Path, namespace: str, pod: str) -> list[dict]:
    """Every live process the local kubelet of `state_dir` runs for the pod, read from /proc: those with the
    kubelet's marker in their environment and the pod's folder as working directory, and every process under
    them (vLLM's engine core and worker rename themselves with setproctitle, which overwrites what /proc shows
    of their environment)."""
    marker = f"{POD_MARKER}={state_dir.resolve()}".encode()
    table = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state, parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            environ = (proc / "environ").read_bytes().split(b"\0")
            cwd = Path(os.readlink(proc / "cwd").removesuffix(" (deleted)"))
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if state != "Z":
            ours = marker in environ and cwd.name == f"{namespace}_{pod}"
            table[int(proc.name)] = (
                int(parent),
                ours,
                [part.decode(errors="replace") for part in cmdline if part],
            )
    found = {pid for pid, (_, ours, _) in table.items() if ours}
    grew = True
    while grew:
        below = {pid for pid, (parent, _, _) in table.items() if parent in found} - found
        found |= below
        grew = bool(below)
    return [{"pid": pid, "cmdline": table[pid][2]} for pid in sorted(found)]


def completion(
    url: str, model: str = SERVED, prompt: str = "the quick brown fox", max_tokens: int = 16
) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    answer = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    return {"status": answer.status_code, "body": answer.json()}


def chat(url: str, model: str = SERVED, content: str = "hello") -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
    }
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    return {"status": answer.status_code, "body": answer.json()}


def adapters_served(url: str) -> dict[str, str]:
    """adapter -> its path, of the LoRA adapters a vLLM server lists in /v1/models (the base model has no parent)."""
    data = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    return {m["id"]: m["root"] for m in data if m.get("parent")}


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        return answer.read().decode()


def exposed_names(text: str) -> set[str]:
    """The sample names of a Prometheus exposition (histograms as their _bucket/_sum/_count series)."""
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def delete_and_wait(models, name: str, timeout: float = 180) -> None:
    """Deletes `name` and waits until its pods are gone from the API; prints its status and Events first."""
    print(models.kubectl("get", "md", name, "-o", "yaml", check=False).stdout[-6000:])
    print(models.kubectl("get", "events", "--sort-by=.lastTimestamp", check=False).stdout[-6000:])
    models.kubectl("delete", "md", name, "--ignore-not-found", "--wait=false", check=False)
    deadline = time.monotonic() + timeout
    while models.pods(name) and time.monotonic() < deadline:
        time.sleep(1)
