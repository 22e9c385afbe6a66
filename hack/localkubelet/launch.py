"""What to run for a pod's container on this machine: argv, environment, working directory, volumes. Pure.

The container becomes a local process the way a kubelet would start it, with these local stand-ins:
- paths under the container's volume mounts become host paths (volumes.py);
- `python` is the interpreter running this kubelet (the project's virtual environment);
- `vllm` (the vllm/vllm-openai image's program: `vllm serve ...`) is vLLM's CPU build that `make vllm` installs,
  run through hack/vllm-serve.sh with its CPU settings; a pod whose machine lacks it fails to start with a
  message saying so (the script installs nothing);
- the container's port is a free loopback port, handed to the process through the variables our runtime reads
  (MOE_RUNTIME_PORT / MOE_RUNTIME_HOST, set last, so they beat `env` and `envFrom`), or to vLLM as its
  --host/--port flags (any the args set are replaced);
- the pod's network: `localhost:<port>` or `127.0.0.1:<port>` of a port one of the pod's containers declares,
  in an argument or a variable, becomes that container's loopback port (a sidecar reaching the engine).
Torch's thread pool is sized by the CPU request (1 without one) unless the spec sets OMP_NUM_THREADS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from localkubelet.env import ConfigError, PodContext, container_env, cpu_request, expand
from localkubelet.volumes import Mounts, Volume, container_mounts, plan_volumes, pod_mounts

PORT_ENV, HOST_ENV = "MOE_RUNTIME_PORT", "MOE_RUNTIME_HOST"
LOOPBACK = "127.0.0.1"
# What the runtime image sets (images/runtime.Dockerfile) besides PATH.
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
_PORT_FLAGS = ("--port", "--host")
# hack/vllm-serve.sh: runs a pod's `vllm serve ...` in the environment `make vllm` installs
VLLM_SERVE = str(Path(__file__).resolve().parents[1] / "vllm-serve.sh")
_POD_ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):(\d+)\b")


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    volumes: dict[str, Volume]
    mounts: Mounts
    image_paths: list[str]  # container paths outside every mount: the caller checks them on the host
    pod_mounts: Mounts = (
        Mounts()
    )  # every container's mounts: container paths in configMap files map through these


def plan_launch(
    ctx: PodContext,
    pod_dir: str,
    port: int,
    python: str,
    host_env: Mapping[str, str],
    pod_ports: Mapping[int, int] | None = None,
) -> Launch:
    """ConfigError or volumes.UnsupportedVolume when the container cannot run here as specified.
    `host_env` is what the host adds under the image's variables (PATH, the kubelet's marker); `pod_ports`
    maps the ports the pod's containers declare to their loopback ports."""
    volumes = plan_volumes(ctx.pod, pod_dir)
    mounts = container_mounts(ctx.container, volumes)
    pod_ports = pod_ports or {}
    defined = {name: map_pod_ports(value, pod_ports) for name, value in container_env(ctx).items()}
    command = [expand(part, defined) for part in ctx.container.get("command") or ()]
    if not command:
        raise ConfigError(
            f'container "{ctx.container["name"]}" sets no command: the local kubelet runs no images, so it '
            "cannot know the image's entrypoint"
        )
    args = [map_pod_ports(expand(part, defined), pod_ports) for part in ctx.container.get("args") or ()]
    vllm = PurePosixPath(command[0]).name == "vllm"
    if vllm:
        args = [*without_listen_flags(args), "--host", LOOPBACK, "--port", str(port)]
    elif flags := [a for a in args if a.split("=")[0] in _PORT_FLAGS]:
        raise ConfigError(
            f"args set {', '.join(flags)}: the local kubelet gives each pod its own loopback port through "
            f"{PORT_ENV}/{HOST_ENV}, which a flag would override"
        )
    executable = python if _PYTHON.match(PurePosixPath(command[0]).name) else mounts.map_value(command[0])
    prefix = ["bash", VLLM_SERVE, "vllm"] if vllm else [executable]
    base = {
        **host_env,
        "HOSTNAME": ctx.pod["metadata"]["name"],
        **IMAGE_ENV,
        "OMP_NUM_THREADS": str(torch_threads(ctx.container)),
    }
    env = {
        **base,
        **{name: mounts.map_value(value) for name, value in defined.items()},
        PORT_ENV: str(port),
        HOST_ENV: LOOPBACK,
    }
    working_dir = ctx.container.get("workingDir")
    return Launch(
        argv=[*prefix, *(mounts.map_value(part) for part in [*command[1:], *args])],
        env=env,
        cwd=(mounts.host_path(working_dir) or working_dir) if working_dir else pod_dir,
        volumes=volumes,
        mounts=mounts,
        image_paths=mounts.unmapped_paths([*command[1:], *args, *defined.values()]),
        pod_mounts=pod_mounts(ctx.pod, volumes),
    )


def map_pod_ports(value: str, pod_ports: Mapping[int, int]) -> str:
    """`value` with each `localhost:P` / `127.0.0.1:P` of a port of the pod replaced by its loopback port."""

    def local(match: re.Match[str]) -> str:
        port = int(match.group(1))
        return f"{LOOPBACK}:{pod_ports[port]}" if port in pod_ports else match.group(0)

    return _POD_ADDRESS.sub(local, value)


def without_listen_flags(args: list[str]) -> list[str]:
    """`args` less --host/--port and their values (`--port 8000` or `--port=8000`)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in _PORT_FLAGS:
            skip = True
        elif arg.split("=")[0] not in _PORT_FLAGS:
            out.append(arg)
    return out


def torch_threads(container: Mapping[str, Any]) -> int:
    request = cpu_request(container)
    return max(1, math.ceil(request)) if request else 1
