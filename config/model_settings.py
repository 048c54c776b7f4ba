"""Which NLI model scores the events: the top-level `model`, and a topic's own `model`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from config.model import ConfigModel

DEFAULT_MODEL = "valhalla/distilbart-mnli-12-3"


def _known_device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return value


Device = Annotated[str, AfterValidator(_known_device)]
Dtype = Literal["auto", "float32", "bfloat16", "float16", "int8"]


class ModelSettings(ConfigModel):
    """Which NLI model scores the events, and on what hardware."""

    name: str = Field(DEFAULT_MODEL, min_length=1, description="Hub id or local directory.")
    device: Device = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Dtype = Field(
        "auto",
        description=(
            "auto: bfloat16 on CUDA (float16 without bf16), and on CPUs with AMX or "
            "AVX512-BF16 where a start-up matmul probe finds it faster; else float32. "
            "int8 (CPU only, opt-in): int8 products, in OpenVINO on CPUs with VNNI or AMX, "
            "else in ONNX Runtime; faster, scores move (see Slow on a CPU)."
        ),
    )


class TopicModelSettings(ConfigModel):
    """A topic's own model; `device` and `dtype` left out are the top-level model's."""

    name: str = Field(min_length=1, description="Hub id or local directory.")
    device: Device | None = None
    dtype: Dtype | None = None

    def over(self, default: ModelSettings) -> ModelSettings:
        """The model this entry stands for: its own keys laid over the top-level model's."""
        return ModelSettings(
            name=self.name,
            device=self.device or default.device,
            dtype=self.dtype or default.dtype,
        )


def topic_model(value: Any) -> Any:
    """A topic's `model` as a mapping: a hub id or directory alone is shorthand for `{name}`."""
    return {"name": value} if isinstance(value, str) else value
