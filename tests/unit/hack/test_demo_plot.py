"""The demo's picture is drawn from one copy of the samples: the recorder thread may still be appending while the
report draws (a full run failed on "x and y must have same first dimension" after the demo itself had passed)."""

from __future__ import annotations

import importlib.util
import sys

from tests.paths import ROOT


def load_demo_module(name: str):
    spec = importlib.util.spec_from_file_location(f"demo_{name}", ROOT / "hack" / "demo" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


plot = load_demo_module("plot")
figures = load_demo_module("figures")


class GrowingSamples(list):
    """A list another thread appends to: each pass over it finds one sample more than the last."""

    def __iter__(self):
        items = list(super().__iter__())
        self.append(sample(len(items)))
        return iter(items)


def sample(i: int):
    return figures.Sample(
        at=100.0 + i, queue=float(i), desired=1, ready=1, p99_stable=0.2, p99_canary=None, canary=None
    )


def test_a_picture_of_samples_that_grow_while_it_is_drawn(tmp_path):
    samples = GrowingSamples(sample(i) for i in range(5))
    events = [(102.0, "Normal", "Scaled", "1 -> 2"), (50.0, "Normal", "Promoted", "before the start")]

    out = plot.draw(samples, events, start=100.0, out=tmp_path / "demo.png")

    assert out.stat().st_size > 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
