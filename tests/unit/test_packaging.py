"""The import names the design fixes, and that the folder operator/ never shadows the standard library."""

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_operator_folder_is_imported_as_moe_operator():
    package = importlib.import_module("moe_operator")
    assert Path(list(package.__path__)[0]).resolve() == ROOT / "operator"


def test_runtime_folder_is_imported_as_moe_runtime():
    package = importlib.import_module("moe_runtime")
    assert Path(package.__file__).resolve().parent == ROOT / "runtime"


def test_standard_library_operator_wins_even_from_the_repo_root():
    # python -c puts the working directory first on sys.path, where the folder operator/ lies
    out = subprocess.run(
        [sys.executable, "-c", "import operator, collections; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert not out.strip().startswith(str(ROOT)), out
    assert not (ROOT / "operator" / "__init__.py").exists(), (
        "operator/__init__.py makes the folder shadow the standard library's `operator` module; "
        "keep operator/ a namespace portion (see pyproject.toml)"
    )
