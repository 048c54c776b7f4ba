"""What the numbers were measured on: the processor, its features, the software, the load."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
import transformers

from worker.nli.precision import INT8_FLAGS

CPUINFO = Path("/proc/cpuinfo")
LOADAVG = Path("/proc/loadavg")
# The instruction sets that decide which precision is fast on a CPU.
CPU_FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX512-BF16",
    "avx512_vnni": "AVX512-VNNI",
    "amx_bf16": "AMX",
}


def _cpuinfo_field(name: str) -> str | None:
    """The first value of `name` in /proc/cpuinfo; None where it cannot be read."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(name)),
        "",
    )


def cpu_flags() -> set[str]:
    """This CPU's feature flags; empty where /proc/cpuinfo cannot be read."""
    return set((_cpuinfo_field("flags") or "").split())


def has_vnni(flags: set[str]) -> bool:
    """Whether the CPU has an int8 dot-product instruction (VNNI or AMX int8)."""
    return any(flag in flags for flag in INT8_FLAGS)


def cpu_description() -> str:
    """The processor's name and the matrix instruction sets it has and lacks."""
    name = _cpuinfo_field("model name")
    if name is None:
        return platform.processor() or "unknown CPU"
    name = name or "unknown CPU"
    flags = cpu_flags()
    features = ", ".join(
        f"{label} {'yes' if flag in flags else 'no'}" for flag, label in CPU_FEATURES.items()
    )
    return f"{name}, {os.cpu_count()} logical CPUs ({features})"


def load_average() -> str:
    """The 1-minute load average: other work on the machine while this ran."""
    try:
        return LOADAVG.read_text().split()[0]
    except OSError:
        return "unknown"


def describe(device: torch.device) -> dict[str, Any]:
    """The facts a reader needs to judge the numbers."""
    facts: dict[str, Any] = {"CPU": cpu_description()}
    if device.type == "cuda":
        facts["GPU"] = torch.cuda.get_device_name(device)
    facts |= {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch intra-op threads": torch.get_num_threads(),
        "load average at start": load_average(),
    }
    return facts
