"""What to run for a pod's container on this machine: argv, environment, working directory, volumes. Pure.

The container becomes a local process the way a kubelet would start it, with three local stand-ins:
- paths under the container's volume mounts become host paths (volumes.py);
- `python` is the interpreter running this kubelet (the project's virtual environment);
- the container's port is a free loopback port, handed to the process through the variables the runtime
  reads (MOE_RUNTIME_PORT / MOE_RUNTIME_HOST). They are set last, so they beat `env` and `envFrom`.
Torch's thread pool is sized by the CPU request (1 without one) unless the spec sets OMP_NUM_THREADS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from localkubelet.env import ConfigError, PodContext, container_env, cpu_request, expand
from localkubelet.volumes import Mounts, Volume, container_mounts, plan_volumes

PORT_ENV, HOST_ENV = "MOE_RUNTIME_PORT", "MOE_RUNTIME_HOST"
LOOPBACK = "127.0.0.1"
# What the runtime image sets (images/runtime.Dockerfile) besides PATH.
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")
_PORT_FLAGS = ("--port", "--host")


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    volumes: dict[str, Volume]
    mounts: Mounts
    image_paths: list[str]  # container paths outside every mount: the caller checks them on the host


def plan_launch(ctx: PodContext, pod_dir: str, port: int, python: str, host_env: Mapping[str, str]) -> Launch:
    """ConfigError or volumes.UnsupportedVolume when the container cannot run here as specified.
    `host_env` is what the host adds under the image's variables (PATH, the kubelet's marker)."""
    volumes = plan_volumes(ctx.pod, pod_dir)
    mounts = container_mounts(ctx.container, volumes)
    defined = container_env(ctx)
    command = [expand(part, defined) for part in ctx.container.get("command") or ()]
    if not command:
        raise ConfigError(
            f'container "{ctx.container["name"]}" sets no command: the local kubelet runs no images, so it '
            "cannot know the image's entrypoint"
        )
    args = [expand(part, defined) for part in ctx.container.get("args") or ()]
    if flags := [a for a in args if a.split("=")[0] in _PORT_FLAGS]:
        raise ConfigError(
            f"args set {', '.join(flags)}: the local kubelet gives each pod its own loopback port through "
            f"{PORT_ENV}/{HOST_ENV}, which a flag would override"
        )
    executable = python if _PYTHON.match(PurePosixPath(command[0]).name) else mounts.map_value(command[0])
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
        argv=[executable, *(mounts.map_value(part) for part in [*command[1:], *args])],
        env=env,
        cwd=(mounts.host_path(working_dir) or working_dir) if working_dir else pod_dir,
        volumes=volumes,
        mounts=mounts,
        image_paths=mounts.unmapped_paths([*command[1:], *args, *defined.values()]),
    )


def torch_threads(container: Mapping[str, Any]) -> int:
    request = cpu_request(container)
    return max(1, math.ceil(request)) if request else 1
