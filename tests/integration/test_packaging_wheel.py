"""The wheel the images install carries both packages under their import names, and nothing named operator."""

import subprocess
import sys
import zipfile

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.integration


def test_wheel_holds_moe_operator_and_moe_runtime(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(tmp_path)],
        check=True, cwd=tmp_path, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("moedeploy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    top_levels = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_levels == {"moe_operator", "moe_runtime"}
    # native.c: the kernels' source, built where they run
    for module in ("moe_operator/__main__.py", "moe_operator/handlers.py", "moe_runtime/__main__.py",
                   "moe_runtime/engine/engine.py", "moe_runtime/serve/command.py",
                   "moe_runtime/model/lora/adapter.py", "moe_operator/decisions/spec.py",
                   "moe_runtime/model/native.c"):  # fmt: skip
        assert module in names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requirements = [line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line]  # fmt: skip
    # the operator image installs the bare distribution: torch must come only with the runtime extra
    assert requirements and not any("torch" in line for line in requirements)
