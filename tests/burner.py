"""A CPU burner beside a test: decisions made from measurements must hold on a busy machine."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def cpu_burner(processes: int = 1) -> Iterator[list[subprocess.Popen]]:
    """`processes` busy loops at normal priority for as long as the block runs."""
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(processes)
    ]
    try:
        yield burners
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
