"""The CPU's precision: hardware-bfloat16 flags, then a probe with an injected timer."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from worker.nli.precision import (
    BF16_MIN_SPEEDUP,
    PROBE_REPEATS,
    PROBE_WARMUPS,
    MatmulTimer,
    cpu_bf16_flags,
    cpu_int8_flags,
    cpu_precision,
)


class ScriptedTimer:
    """Seconds per product by dtype, and a record of what was timed."""

    def __init__(self, float32: float, bfloat16: float) -> None:
        self.seconds = {torch.float32: float32, torch.bfloat16: bfloat16}
        self.calls: list[torch.dtype] = []

    def __call__(self, dtype: torch.dtype) -> float:
        self.calls.append(dtype)
        return self.seconds[dtype]


def test_without_the_flags_it_is_float32_and_nothing_is_probed() -> None:
    timer = ScriptedTimer(float32=1.0, bfloat16=0.1)
    chosen = cpu_precision(flags=("avx2", "avx512f", "avx512_vnni"), timer=timer)
    assert chosen.dtype == torch.float32
    assert chosen.flags == ()
    assert timer.calls == []


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_with_a_flag_and_a_faster_bfloat16_it_is_bfloat16(flag: str) -> None:
    timer = ScriptedTimer(float32=1.0, bfloat16=0.35)
    chosen = cpu_precision(flags=("avx2", flag), timer=timer)
    assert chosen.dtype == torch.bfloat16
    assert chosen.flags == (flag,)
    assert timer.calls.count(torch.float32) == PROBE_WARMUPS + PROBE_REPEATS
    assert timer.calls.count(torch.bfloat16) == PROBE_WARMUPS + PROBE_REPEATS


# Slower, as fast, and faster by less than the margin (90% of it).
@pytest.mark.parametrize("bfloat16", [2.0, 1.0, 1.0 / (0.9 * BF16_MIN_SPEEDUP)])
def test_with_a_flag_but_no_clear_gain_it_is_float32(bfloat16: float) -> None:
    chosen = cpu_precision(flags=("avx512_bf16",), timer=ScriptedTimer(1.0, bfloat16))
    assert chosen.dtype == torch.float32


def test_the_fastest_repeat_counts(caplog: pytest.LogCaptureFixture) -> None:
    # A slow first product of each dtype (contention, kernel selection) is not the figure.
    times = iter([9.0, 9.0] + [1.0, 0.4] * PROBE_REPEATS)

    def timer(dtype: torch.dtype) -> float:
        return next(times)

    with caplog.at_level(logging.INFO, logger="worker.nli.precision"):
        chosen = cpu_precision(flags=("amx_bf16",), timer=timer)
    assert chosen.product_seconds == {torch.float32: 1.0, torch.bfloat16: 0.4}
    assert chosen.gflops(torch.bfloat16) == pytest.approx(2.5 * chosen.gflops(torch.float32))
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("CPU precision bfloat16: flags amx_bf16;")
    assert "(2.50x; bfloat16 needs >= " in line


def test_the_choice_is_logged_without_a_probe(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="worker.nli.precision"):
        cpu_precision(flags=())
    assert [r.getMessage() for r in caplog.records] == [
        "CPU precision float32: no bfloat16 matmul flag (amx_bf16, avx512_bf16), not probed"
    ]


def test_the_matmul_timer_times_one_product_by_its_clock() -> None:
    ticks = iter([10.0, 10.5, 20.0, 20.25])
    timer = MatmulTimer(shape=(2, 4, 3), clock=lambda: next(ticks))
    assert timer(torch.float32) == 0.5
    assert timer(torch.bfloat16) == 0.25


def test_the_flags_are_read_from_the_cpu_flags(tmp_path: Path) -> None:
    with_amx = tmp_path / "amx"
    with_amx.write_text("flags\t\t: fpu avx2 avx512_bf16 amx_bf16 amx_tile amx_int8\n")
    zen4 = tmp_path / "zen4"
    zen4.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    without = tmp_path / "without"
    without.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert cpu_bf16_flags(with_amx) == ("amx_bf16", "avx512_bf16")
    assert cpu_bf16_flags(zen4) == ("avx512_bf16",)
    assert cpu_bf16_flags(without) == ()
    assert cpu_int8_flags(with_amx) == ("amx_int8",)
    assert cpu_int8_flags(zen4) == ("avx512_vnni",)
    assert cpu_int8_flags(without) == ()
