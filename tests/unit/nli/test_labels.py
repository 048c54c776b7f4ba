"""Entailment and contradiction classes are found by name, in every label order."""

from __future__ import annotations

import pytest

from tests.models import LABEL_ORDERS, NOT_NLI
from worker.errors import ModelError
from worker.nli.labels import LabelIds, resolve_label_ids


def _label2id(id2label: dict[int, str]) -> dict[str, int]:
    return {label: i for i, label in id2label.items()}


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("contradiction-neutral-entailment", LabelIds(entailment_id=2, contradiction_id=0)),
        ("contradiction-entailment-neutral", LabelIds(entailment_id=1, contradiction_id=0)),
        ("entailment-neutral-contradiction", LabelIds(entailment_id=0, contradiction_id=2)),
        ("entailed-neutral-contradicted", LabelIds(entailment_id=0, contradiction_id=2)),
        ("entailment-not_entailment", LabelIds(entailment_id=0, contradiction_id=1)),
    ],
)
def test_every_order_of_the_design_table(order: str, expected: LabelIds) -> None:
    assert resolve_label_ids(_label2id(LABEL_ORDERS[order])) == expected


@pytest.mark.parametrize(
    "not_entailment",
    [
        "not_entailment",
        "NOT_ENTAILMENT",
        "not entailment",
        "non_entailment",
        "non-entailment",
        "Not-Entailed",
    ],
)
def test_spellings_of_not_entailment(not_entailment: str) -> None:
    # Put first so that the "other class" rule cannot be what finds it.
    label2id = {not_entailment: 0, "entailment": 1, "neutral": 2}
    assert resolve_label_ids(label2id) == LabelIds(entailment_id=1, contradiction_id=0)


def test_case_and_suffixes_do_not_matter() -> None:
    label2id = {"NEUTRAL": 0, "CONTRADICTION": 1, "ENTAILMENT": 2}
    assert resolve_label_ids(label2id) == LabelIds(entailment_id=2, contradiction_id=1)


def test_a_two_class_model_uses_its_other_class_as_contradiction() -> None:
    assert resolve_label_ids({"other": 0, "entailment": 1}) == LabelIds(1, 0)


def test_a_model_without_entailment_is_refused_naming_its_labels() -> None:
    with pytest.raises(ModelError, match="entail") as refused:
        resolve_label_ids(_label2id(NOT_NLI))
    assert "'negative'" in str(refused.value)
    assert "'positive'" in str(refused.value)


def test_generic_label_names_are_refused() -> None:
    with pytest.raises(ModelError, match="LABEL_0"):
        resolve_label_ids({"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2})


def test_three_classes_without_contradiction_are_refused() -> None:
    with pytest.raises(ModelError, match="contradiction"):
        resolve_label_ids({"entailment": 0, "neutral": 1, "other": 2})
