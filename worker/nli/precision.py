"""Which precision a CPU multiplies fastest: its flags, confirmed by a short matmul probe.

bfloat16 halves the bytes of every weight and activation, and CPUs with a
hardware bfloat16 multiply (AMX, AVX512-BF16) run its matrix products two to
three times faster than float32's. Without one, torch emulates bfloat16 and it
is several times slower. The flags say whether the hardware is there; the
probe confirms, on this machine and thread count, that it pays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
# CPU flags of a hardware bfloat16 multiply: AMX's tile multiply (Intel Sapphire
# Rapids and later) and AVX512-BF16's dot product (Intel Cooper Lake, AMD Zen 4
# and 5). torch's oneDNN kernels use either for bfloat16 matrix products.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# CPU flags of an int8 dot product: AMX's int8 tiles, VNNI on AVX-512 (Intel
# Cascade Lake and later, AMD Zen 4 and 5) or on AVX (Alder Lake and later),
# where int8 matrix products run several times faster than float32's.
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
# torch's own feature detection (private helpers), where /proc/cpuinfo cannot be read.
DETECTED_FLAGS: dict[str, Callable[[], bool]] = {
    "amx_bf16": torch.cpu._is_amx_tile_supported,
    "avx512_bf16": torch.cpu._is_avx512_bf16_supported,
    "amx_int8": torch.cpu._is_amx_tile_supported,
    "avx512_vnni": torch.cpu._is_vnni_supported,
    # torch has no detection of AVX-VNNI.
    "avx_vnni": lambda: False,
}
# The probe's product (tokens x inputs x outputs): one of distilbart-mnli's
# 1024-wide projections over a small forward batch, so it measures the kernels
# the model runs, and takes milliseconds.
PROBE_SHAPE = (256, 1024, 1024)
# The first product of a dtype picks and JIT-compiles its kernel; it is not timed.
PROBE_WARMUPS = 1
# Timed products per dtype, taking turns so that other work on the machine hits
# both alike; the fastest of each counts, as contention only ever slows one.
PROBE_REPEATS = 10
# bfloat16 is chosen only when its product is at least this much faster than
# float32's: it rounds activations to 8 significant bits, so scores move by up
# to about 1e-2, and that must buy a clear gain, not one within the noise of a
# shared machine. Hardware bfloat16 measured 2.6x float32 on a Zen 4 EPYC;
# emulated bfloat16 is far below 1x.
BF16_MIN_SPEEDUP = 1.25
# A multiply-add is two floating-point operations.
FLOPS_PER_MAC = 2

# Seconds of one probe product in the given dtype.
ProductTimer = Callable[[torch.dtype], float]


@dataclass(frozen=True, slots=True)
class CpuPrecision:
    """The dtype chosen for a CPU, with the flags and probe figures it was chosen on."""

    dtype: torch.dtype
    flags: tuple[str, ...]
    # Best seconds of one PROBE_SHAPE product per dtype; empty when not probed.
    product_seconds: dict[torch.dtype, float]

    def gflops(self, dtype: torch.dtype) -> float:
        """The probe's GFLOP/s in `dtype`."""
        rows, inputs, outputs = PROBE_SHAPE
        return FLOPS_PER_MAC * rows * inputs * outputs / self.product_seconds[dtype] / 1e9

    def describe(self) -> str:
        """One log line: flags seen, the probe's figures, the choice."""
        chosen = str(self.dtype).removeprefix("torch.")
        if not self.product_seconds:
            return (
                f"CPU precision {chosen}: no bfloat16 matmul flag ({', '.join(BF16_FLAGS)}), "
                "not probed"
            )
        fp32, bf16 = self.gflops(torch.float32), self.gflops(torch.bfloat16)
        return (
            f"CPU precision {chosen}: flags {', '.join(self.flags)}; "
            f"{'x'.join(map(str, PROBE_SHAPE))} product on {torch.get_num_threads()} threads: "
            f"float32 {fp32:.0f} GFLOP/s, bfloat16 {bf16:.0f} GFLOP/s "
            f"({bf16 / fp32:.2f}x; bfloat16 needs >= {BF16_MIN_SPEEDUP:g}x)"
        )


class MatmulTimer:
    """Times one `linear` product (a Linear layer's path) of `shape` in a given dtype.

    The operands are made once per dtype, so that each call times the product only.
    """

    def __init__(
        self,
        shape: tuple[int, int, int] = PROBE_SHAPE,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._shape = shape
        self._clock = clock
        self._operands: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, dtype: torch.dtype) -> float:
        """Seconds of one product in `dtype`."""
        if dtype not in self._operands:
            rows, inputs, outputs = self._shape
            generator = torch.Generator().manual_seed(0)
            self._operands[dtype] = (
                torch.randn(rows, inputs, generator=generator).to(dtype),
                torch.randn(outputs, inputs, generator=generator).to(dtype),
            )
        x, w = self._operands[dtype]
        with torch.inference_mode():
            started = self._clock()
            torch.nn.functional.linear(x, w)
            return self._clock() - started


def cpu_flags(wanted: tuple[str, ...], cpuinfo: Path = CPUINFO) -> tuple[str, ...]:
    """Which of the CPU flags `wanted` (of DETECTED_FLAGS) this CPU has, in their order."""
    try:
        flags = set(cpuinfo.read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return tuple(flag for flag in wanted if DETECTED_FLAGS[flag]())
    return tuple(flag for flag in wanted if flag in flags)


def cpu_bf16_flags(cpuinfo: Path = CPUINFO) -> tuple[str, ...]:
    """The hardware-bfloat16 flags (`BF16_FLAGS`) this CPU has."""
    return cpu_flags(BF16_FLAGS, cpuinfo)


def cpu_int8_flags(cpuinfo: Path = CPUINFO) -> tuple[str, ...]:
    """The int8 dot-product flags (`INT8_FLAGS`) this CPU has."""
    return cpu_flags(INT8_FLAGS, cpuinfo)


def probe(timer: ProductTimer) -> dict[torch.dtype, float]:
    """The best seconds of a float32 and a bfloat16 product, after a warm-up of each."""
    dtypes = (torch.float32, torch.bfloat16)
    for _ in range(PROBE_WARMUPS):
        for dtype in dtypes:
            timer(dtype)
    best = {dtype: float("inf") for dtype in dtypes}
    for _ in range(PROBE_REPEATS):
        for dtype in dtypes:
            best[dtype] = min(best[dtype], timer(dtype))
    return best


def cpu_precision(
    flags: Collection[str] | None = None, timer: ProductTimer | None = None
) -> CpuPrecision:
    """bfloat16 where the CPU has a hardware bfloat16 multiply and the probe finds it
    `BF16_MIN_SPEEDUP` faster than float32; float32 otherwise. Logs the choice.

    `flags` defaults to this CPU's (`cpu_bf16_flags`), `timer` to a `MatmulTimer`;
    without a flag nothing is probed.
    """
    seen = tuple(cpu_bf16_flags() if flags is None else (f for f in BF16_FLAGS if f in flags))
    if not seen:
        choice = CpuPrecision(torch.float32, seen, {})
    else:
        seconds = probe(timer or MatmulTimer())
        faster = seconds[torch.float32] >= BF16_MIN_SPEEDUP * seconds[torch.bfloat16]
        choice = CpuPrecision(torch.bfloat16 if faster else torch.float32, seen, seconds)
    log.info("%s", choice.describe())
    return choice
