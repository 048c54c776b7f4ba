"""The issue's targets: a row's throughput over the fastest of the rows it must beat."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bench.report import Throughput

# Looks a measured row up by name (`Report.find`); None where it was not measured.
FindRow = Callable[[str], Throughput | None]


@dataclass(frozen=True, slots=True)
class Target:
    """`row` must reach `at_least` times the texts/s of the fastest measured row of `against`."""

    short: str
    """How the verdict names `row` ("worker", "worker int8")."""
    row: str
    against: tuple[str, ...]
    at_least: float
    vnni_only: bool = False
    """The target holds on CPUs with an int8 dot product only (VNNI, AMX int8)."""


def verdict(target: Target, find: FindRow, vnni: bool) -> tuple[str, str] | None:
    """The fact line of `target`, as (key, value); None when a side was not measured.

    The value reads "1.23x (target >= 1.25x: met)" or "NOT met"; a VNNI-only
    target on a CPU without VNNI reports its ratio and says the target does not apply.
    """
    measured = find(target.row)
    bases = [row for row in map(find, target.against) if row is not None]
    if measured is None or not bases:
        return None
    base = max(bases, key=lambda row: row.texts_per_s)
    key = f"{target.short} / {base.name}"
    if len(target.against) > 1:
        key += f" (the faster of {' and '.join(target.against)})"
    ratio = measured.texts_per_s / base.texts_per_s
    if target.vnni_only and not vnni:
        applies = f"target >= {target.at_least:g}x holds with VNNI; this CPU has none"
        return key, f"{ratio:.2f}x ({applies})"
    outcome = "met" if ratio >= target.at_least else "NOT met"
    return key, f"{ratio:.2f}x (target >= {target.at_least:g}x: {outcome})"


def verdicts(targets: Iterable[Target], find: FindRow, vnni: bool) -> dict[str, str]:
    """The fact lines of every target whose rows were measured, in order."""
    found = (verdict(target, find, vnni) for target in targets)
    return dict(line for line in found if line is not None)
