"""Which output class of an NLI model means entailment, and which contradiction.

NLI checkpoints disagree on the order of their classes (see DESIGN.md's table),
so the indices are read from the model's `label2id` by name, never assumed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from worker.errors import ModelError

# transformers' zero-shot pipeline takes the first label starting with this as
# entailment ("entailment", "ENTAILMENT", "Entailed"); matching it keeps parity.
ENTAILMENT_PREFIX = "entail"
# "contradiction", "CONTRADICTION", "contradicted".
CONTRADICTION_PREFIX = "contradict"
# Two-class models call their other class "not_entailment" and spellings of it;
# compared after lower-casing and mapping "-" and " " to "_".
NOT_ENTAILMENT_PREFIXES = ("not_entail", "non_entail")
# With two classes, the one that is not entailment plays contradiction.
TWO_CLASSES = 2


@dataclass(frozen=True, slots=True)
class LabelIds:
    """Indices of the entailment and contradiction classes in the model's logits."""

    entailment_id: int
    contradiction_id: int


def _normalized(label: str) -> str:
    return label.strip().lower().replace("-", "_").replace(" ", "_")


def resolve_label_ids(label2id: Mapping[str, int | str]) -> LabelIds:
    """Find the entailment and contradiction (or not-entailment) classes by name.

    Raises `ModelError` naming the labels found when the model has no
    entailment class, or no class that can stand for contradiction.
    """
    found = ", ".join(f"{label!r}={index}" for label, index in label2id.items()) or "none"
    entailment_id = next(
        (
            int(i)
            for label, i in label2id.items()
            if _normalized(label).startswith(ENTAILMENT_PREFIX)
        ),
        None,
    )
    if entailment_id is None:
        raise ModelError(
            "the model is not an NLI model usable for zero-shot classification: "
            f"none of its labels starts with {ENTAILMENT_PREFIX!r} (labels: {found})"
        )

    contradiction_id = next(
        (
            int(i)
            for label, i in label2id.items()
            if _normalized(label).startswith((CONTRADICTION_PREFIX, *NOT_ENTAILMENT_PREFIXES))
        ),
        None,
    )
    if contradiction_id is None and len(label2id) == TWO_CLASSES:
        contradiction_id = next(int(i) for i in label2id.values() if int(i) != entailment_id)
    if contradiction_id is None:
        raise ModelError(
            "the model has an entailment label but none for contradiction (a label starting "
            f"with {CONTRADICTION_PREFIX!r} or 'not_entail'), which multi-label scoring needs "
            f"(labels: {found})"
        )
    return LabelIds(entailment_id=entailment_id, contradiction_id=contradiction_id)
