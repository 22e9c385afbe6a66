"""The import names the design fixes, in folders of the same names, and that the folder operator/ never shadows
the standard library."""

import importlib
import subprocess
import sys
from pathlib import Path

from tests.paths import ROOT


def test_each_package_lives_in_the_folder_of_its_import_name():
    for top, name in (("operator", "moe_operator"), ("runtime", "moe_runtime")):
        package = importlib.import_module(name)
        assert Path(package.__file__).resolve().parent == ROOT / top / name


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
        "operator/ only holds the package folder moe_operator/"
    )
