"""Low-precision fidelity: the worker's scores in bfloat16 and int8 against float32.

Each precision is loaded through the worker's own `load_classifier`, so what is
measured is what the worker runs: the bfloat16 cast in torch, and for int8 the
ONNX export with int8 MatMul weights run by ONNX Runtime. The same texts and
labels are scored multi-label and single-label.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import Agreement, ScoreMap, agreement
from worker.nli.base import Task
from worker.nli.classifier import load_classifier

REFERENCE = "float32"
LOW_PRECISIONS = ("bfloat16", "int8")
MODES = {"multi-label": True, "single-label": False}


def top_margin(scores: Sequence[ScoreMap]) -> float:
    """The mean gap between each text's highest and second-highest score.

    Near zero on random weights; a low-precision change smaller than it cannot
    flip the top label.
    """
    if not scores or len(scores[0]) < 2:
        raise ValueError("a margin needs at least one text and two labels")
    ranked = np.sort(np.array([list(s.values()) for s in scores]), axis=1)
    return float(np.mean(ranked[:, -1] - ranked[:, -2]))


def flip_margins(reference: Sequence[ScoreMap], other: Sequence[ScoreMap]) -> list[float]:
    """The reference's margin (top label over the second) on each text whose top label
    `other` changes: how close a call each flip was.

    Top labels are taken as `agreement` takes them, so the two count the same
    flips: bfloat16 logits can tie exactly, and a tie goes to the label first in
    sorted order.
    """
    labels = sorted(reference[0]) if reference else []
    ref = np.array([[r[label] for label in labels] for r in reference])
    oth = np.array([[o[label] for label in labels] for o in other])
    if ref.shape != oth.shape:
        raise ValueError("flips need the same texts and labels on both sides")
    flipped = ref.argmax(axis=1) != oth.argmax(axis=1)
    ranked = np.sort(ref[flipped], axis=1)
    return (ranked[:, -1] - ranked[:, -2]).tolist() if flipped.any() else []


@dataclass(slots=True)
class Fidelity:
    """bfloat16 and int8 against float32 on one model, texts and labels, in both modes."""

    model: str
    texts: int
    labels: tuple[str, ...]
    # float32's scores in each mode: the reference of every agreement.
    reference: dict[str, list[ScoreMap]]
    agreements: list[Agreement] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def markdown(self, command: str) -> str:
        """A small markdown table of the agreements, then the facts."""
        lines = [
            f"## Low-precision fidelity: {self.model}",
            "",
            f"`{command}`",
            "",
            f"- {self.texts} texts x {len(self.labels)} labels ({', '.join(self.labels)})",
            *(f"- {key}: {value}" for key, value in self.facts.items()),
            "",
            "| vs float32 | texts | top label agrees | max abs Δscore | mean abs Δscore |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {a.name} | {a.events} | {100 * a.top_label:.1f}% | {a.max_abs_delta:.2g} | "
            f"{a.mean_abs_delta:.2g} |"
            for a in self.agreements
        ]
        return "\n".join(lines) + "\n"

    def save(self, directory: Path, stem: str, markdown: str, extra: dict[str, Any]) -> None:
        """Write `stem.md` and `stem.json` (with `extra`, but not the raw scores)."""
        directory.mkdir(parents=True, exist_ok=True)
        data = {
            "model": self.model,
            "texts": self.texts,
            "labels": list(self.labels),
            "agreements": [asdict(a) for a in self.agreements],
            "facts": self.facts,
            **extra,
        }
        (directory / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
        (directory / f"{stem}.md").write_text(markdown)


def scores(
    model_dir: Path, dtype: str, texts: Sequence[str], labels: tuple[str, ...], template: str
) -> tuple[str, dict[str, list[ScoreMap]]]:
    """The worker's scores of `texts` in `dtype`, in each mode; and the precision it ran in."""
    classifier = load_classifier(str(model_dir), "cpu", dtype)
    by_mode: dict[str, list[ScoreMap]] = {}
    for mode, multi_label in MODES.items():
        task = Task(labels, template, multi_label)
        results = classifier.classify([classifier.encode(text, task) for text in texts])
        by_mode[mode] = [dict(zip(labels, r.scores, strict=True)) for r in results]
    return classifier.precision, by_mode


def measure(
    model_dir: Path, name: str, texts: Sequence[str], labels: tuple[str, ...], template: str
) -> Fidelity:
    """bfloat16 and int8 against float32 on `texts` x `labels`, multi- and single-label."""
    _, reference = scores(model_dir, REFERENCE, texts, labels, template)
    measured = Fidelity(name, len(texts), labels, reference)
    for mode, ref in reference.items():
        measured.facts[f"float32 mean margin, top label over the second ({mode})"] = (
            f"{top_margin(ref):.3f}"
        )
    for dtype in LOW_PRECISIONS:
        precision, low = scores(model_dir, dtype, texts, labels, template)
        for mode, ref in reference.items():
            row = f"{precision} (worker, {name}, {mode})"
            measured.agreements.append(agreement(row, ref, low[mode]))
            flips = flip_margins(ref, low[mode])
            if flips:
                measured.facts[f"{precision}, {mode}: top label changed"] = (
                    f"on {len(flips)} of {len(ref)} texts, whose float32 margin was at most "
                    f"{max(flips):.3f}"
                )
    return measured
