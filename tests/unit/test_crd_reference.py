"""The ModelDeployment reference in docs/ is generated from the CRD: it must not drift from it."""

import subprocess
import sys

from tests.paths import ROOT


def test_the_reference_is_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "crd_reference.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
