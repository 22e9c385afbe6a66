"""Each engine's image, as the operator is configured (the chart's values, `--engine-image ENGINE=IMAGE`). Pure.

A spec without spec.runtime.image runs its engine's image (the operator policy checks only images a spec names:
these the cluster admin chose). Our runtime's image also runs the helper containers of vLLM and SGLang pods
(the S3 download, the adapter sidecar): it holds both commands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from moe_operator.decisions.engine_metrics import ENGINES, MOE_RUNTIME, SGLANG, VLLM
from moe_operator.decisions.spec import ModelDeploymentSpec

VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"
SGLANG_IMAGE = "lmsysorg/sglang:v0.5.23"


def default_images(version: str) -> dict[str, str]:
    """The images of this operator release (`version`: ours, the runtime image's tag)."""
    return {MOE_RUNTIME: f"ghcr.io/moedeploy/runtime:{version}", VLLM: VLLM_IMAGE, SGLANG: SGLANG_IMAGE}


@dataclass(frozen=True)
class EngineImages:
    by_engine: Mapping[str, str] = field(default_factory=lambda: default_images("latest"))

    def of(self, spec: ModelDeploymentSpec) -> str:
        return spec.runtime.image or self.by_engine[spec.runtime.engine]

    @property
    def helper(self) -> str:
        return self.by_engine[MOE_RUNTIME]

    def with_overrides(self, items: Iterable[str]) -> EngineImages:
        """`ENGINE=IMAGE` items replacing the images of those engines; ValueError names a bad one."""
        images = dict(self.by_engine)
        for item in items:
            engine, sep, image = item.partition("=")
            if not sep or not image.strip():
                raise ValueError(f"{item!r}: expected ENGINE=IMAGE")
            if engine not in ENGINES:
                raise ValueError(f"{item!r}: unknown engine {engine!r} (known: {', '.join(ENGINES)})")
            images[engine] = image.strip()
        return EngineImages(images)


# what a caller that names no images gets (the unit tests, tools): this release's images, tagged "latest"
DEFAULT = EngineImages()
