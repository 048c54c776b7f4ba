"""What the numbers were measured on: the processor, its features, the software, the load."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch
import transformers

CPUINFO = Path("/proc/cpuinfo")
LOADAVG = Path("/proc/loadavg")
# The instruction sets that decide which precision is fast on a CPU.
CPU_FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX512-BF16",
    "amx_bf16": "AMX",
}


def cpu_description() -> str:
    """The processor's name and the matrix instruction sets it has and lacks."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next(
        (
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    flags = set(
        next(
            (
                line.split(":", 1)[1].split()
                for line in text.splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    )
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
