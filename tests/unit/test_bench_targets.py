"""The issue's targets as the benchmark reports them: a ratio to the fastest base, met or not."""

from __future__ import annotations

from bench.environment import has_vnni
from bench.report import Report, Throughput
from bench.targets import Target, verdict, verdicts


def report_of(**texts_per_s: float) -> Report:
    """A report whose rows score 10 texts at the given texts/s (row names: keyword names)."""
    report = Report(title="t", command="c")
    for name, rate in texts_per_s.items():
        report.throughput.append(Throughput(name, 10 / rate, 10, 80, 800, 1e9))
    return report


def test_the_ratio_is_against_the_faster_base_and_names_it() -> None:
    report = report_of(worker=5.0, slow=1.0, fast=4.0)
    line = verdict(Target("worker", "worker", ("slow", "fast"), 1.25), report.find, False)
    assert line == ("worker / fast (the faster of slow and fast)", "1.25x (target >= 1.25x: met)")


def test_a_ratio_below_the_target_is_not_met() -> None:
    report = report_of(worker=2.0, base=1.0)
    line = verdict(Target("worker", "worker", ("base",), 6.0), report.find, True)
    assert line == ("worker / base", "2.00x (target >= 6x: NOT met)")


def test_a_vnni_target_on_a_cpu_without_vnni_reports_the_ratio_only() -> None:
    report = report_of(worker=2.0, base=1.0)
    target = Target("worker int8", "worker", ("base",), 6.0, vnni_only=True)
    without = verdict(target, report.find, vnni=False)
    assert without is not None
    assert without[1].startswith("2.00x (") and "met" not in without[1]
    assert verdict(target, report.find, vnni=True) == (
        "worker int8 / base",
        "2.00x (target >= 6x: NOT met)",
    )


def test_targets_whose_rows_were_not_measured_are_left_out() -> None:
    report = report_of(worker=3.0, base=1.0, other=1.0)
    targets = (
        Target("worker", "worker", ("base",), 2.0),
        Target("worker", "worker", ("missing",), 1.0),
        Target("worker", "missing", ("base",), 1.0),
        Target("worker", "worker", ("missing", "other"), 1.0),
    )
    assert verdicts(targets, report.find, False) == {
        "worker / base": "3.00x (target >= 2x: met)",
        "worker / other (the faster of missing and other)": "3.00x (target >= 1x: met)",
    }


def test_vnni_is_any_int8_dot_product_flag() -> None:
    assert has_vnni({"avx2", "avx512_vnni"})
    assert has_vnni({"avx_vnni"})
    assert has_vnni({"amx_int8"})
    assert not has_vnni({"avx2", "avx512f", "avx512_bf16"})
