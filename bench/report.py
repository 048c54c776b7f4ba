"""What a benchmark measured, and how it is printed: rows, ratios, agreement."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

GIGA = 1e9
# Label -> score, one per text: the common currency of the pipeline, the classifier and the worker.
ScoreMap = Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Throughput:
    """One timed pass: how much work, in how long. `flops` excludes padding."""

    name: str
    seconds: float
    texts: int
    pairs: int
    tokens: int
    flops: float
    note: str = ""
    # CPU time the run itself used (all its threads); None where not measured.
    # Unlike wall-clock time it hardly moves with other work on a shared machine.
    cpu_seconds: float | None = None

    @property
    def texts_per_s(self) -> float:
        """Texts (events) scored per second."""
        return self.texts / self.seconds

    @property
    def pairs_per_s(self) -> float:
        """Premise/hypothesis pairs per second."""
        return self.pairs / self.seconds

    @property
    def tokens_per_s(self) -> float:
        """Real (unpadded) tokens per second."""
        return self.tokens / self.seconds

    @property
    def flops_per_s(self) -> float:
        """Model matmul FLOP/s on real tokens."""
        return self.flops / self.seconds

    @property
    def texts_per_cpu_s(self) -> float | None:
        """Texts scored per CPU-second, when the CPU time is known."""
        return self.texts / self.cpu_seconds if self.cpu_seconds else None


@dataclass(frozen=True, slots=True)
class Agreement:
    """How far one precision's scores are from float32's on the same inputs.

    `spread` is the mean gap between an event's highest and lowest score: with
    random weights it is small, so a small |delta| can already flip the top label.
    """

    name: str
    events: int
    top_label: float
    max_abs_delta: float
    mean_abs_delta: float
    spread: float


def agreement(name: str, reference: Sequence[ScoreMap], other: Sequence[ScoreMap]) -> Agreement:
    """Top-label agreement and score differences of `other` against `reference`."""
    if len(reference) != len(other) or not reference:
        raise ValueError("agreement needs the same, non-zero number of events on both sides")
    labels = sorted(reference[0])
    ref = np.array([[r[label] for label in labels] for r in reference])
    oth = np.array([[o[label] for label in labels] for o in other])
    delta = np.abs(ref - oth)
    return Agreement(
        name=name,
        events=len(reference),
        top_label=float(np.mean(ref.argmax(axis=1) == oth.argmax(axis=1))),
        max_abs_delta=float(delta.max()),
        mean_abs_delta=float(delta.mean()),
        spread=float(np.mean(ref.max(axis=1) - ref.min(axis=1))),
    )


@dataclass(slots=True)
class Report:
    """Everything one benchmark run measured, printed as markdown and saved as JSON."""

    title: str
    command: str
    environment: dict[str, Any] = field(default_factory=dict)
    throughput: list[Throughput] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def find(self, name: str) -> Throughput | None:
        """The throughput row called `name`, if it was measured."""
        return next((row for row in self.throughput if row.name == name), None)

    def markdown(self, baseline: str, peaks: Mapping[str, float]) -> str:
        """The results as markdown: throughput with ratios to `baseline`, then the rest."""
        base = self.find(baseline)
        lines = [f"## {self.title}", "", f"`{self.command}`", ""]
        lines += [f"- {key}: {value}" for key, value in self.environment.items()]
        peak_heads = "".join(f" | % of {name} peak" for name in peaks)
        with_cpu = any(row.cpu_seconds for row in self.throughput)
        cpu_heads = f" | texts/CPU-s | vs {baseline}, CPU time" if with_cpu else ""
        lines += [
            "",
            f"| run | texts/s | pairs/s | tokens/s | GFLOP/s{peak_heads} | vs {baseline}"
            f"{cpu_heads} |",
            "|---|---|---|---|---|" + "---|" * (len(peaks) + 2 * with_cpu) + "---|",
        ]
        for row in self.throughput:
            ratio = f"{row.texts_per_s / base.texts_per_s:.2f}" if base else "n/a"
            shares = "".join(f" | {100 * row.flops_per_s / p:.0f}%" for p in peaks.values())
            name = f"{row.name} ({row.note})" if row.note else row.name
            cpu = ""
            if with_cpu:
                per_cpu, base_cpu = row.texts_per_cpu_s, base.texts_per_cpu_s if base else None
                cpu_ratio = f"{per_cpu / base_cpu:.2f}" if per_cpu and base_cpu else "n/a"
                cpu = f" | {per_cpu:.3g}" if per_cpu else " | n/a"
                cpu += f" | {cpu_ratio}"
            lines.append(
                f"| {name} | {row.texts_per_s:.3g} | {row.pairs_per_s:.3g} | "
                f"{row.tokens_per_s:.4g} | {row.flops_per_s / GIGA:.4g}{shares} | {ratio}{cpu} |"
            )
        if self.agreements:
            lines += [
                "",
                "| vs float32 | events | top label agrees | max abs Δscore | mean abs Δscore "
                "| mean score spread |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {a.name} | {a.events} | {100 * a.top_label:.0f}% | {a.max_abs_delta:.2g} | "
                f"{a.mean_abs_delta:.2g} | {a.spread:.2g} |"
                for a in self.agreements
            ]
        if self.facts:
            lines += ["", *(f"- {key}: {value}" for key, value in self.facts.items())]
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def save(self, directory: Path, stem: str, markdown: str) -> None:
        """Write the report as `stem.json` and `stem.md` into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        for row, raw in zip(self.throughput, data["throughput"], strict=True):
            raw |= {
                "texts_per_s": row.texts_per_s,
                "tokens_per_s": row.tokens_per_s,
                "flops_per_s": row.flops_per_s,
            }
        (directory / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
        (directory / f"{stem}.md").write_text(markdown)
