"""docs/metrics.md is generated from the metric registries: it must not drift from them."""

import subprocess
import sys

from tests.paths import ROOT


def test_the_metrics_reference_is_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "metrics_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
