"""The scoring math gives the numbers of transformers' pipeline postprocess."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.pipelines.zero_shot_classification import ZeroShotClassificationPipeline

from tests.models import LABEL_ORDERS
from worker.nli.labels import resolve_label_ids
from worker.nli.scoring import zero_shot_scores

TOLERANCE = 1e-6


class _PipelineStandIn:
    """Just what `ZeroShotClassificationPipeline.postprocess` reads from `self`."""

    def __init__(self, entailment_id: int) -> None:
        self.entailment_id = entailment_id


def _pipeline_scores(
    logits: np.ndarray, labels: list[str], entailment_id: int, multi_label: bool
) -> list[float]:
    outputs = [
        {"candidate_label": label, "sequence": "text", "logits": torch.from_numpy(row[None, :])}
        for label, row in zip(labels, logits, strict=True)
    ]
    result = ZeroShotClassificationPipeline.postprocess(
        _PipelineStandIn(entailment_id),  # type: ignore[arg-type]
        outputs,
        multi_label=multi_label,
    )
    by_label = dict(zip(result["labels"], result["scores"], strict=True))
    return [by_label[label] for label in labels]


@pytest.mark.parametrize("order", sorted(LABEL_ORDERS))
@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("n_labels", [1, 2, 5, 8])
def test_scores_equal_the_pipeline_postprocess(
    order: str, multi_label: bool, n_labels: int
) -> None:
    id2label = LABEL_ORDERS[order]
    label_ids = resolve_label_ids({label: i for i, label in id2label.items()})
    rng = np.random.default_rng(n_labels * 10 + multi_label)
    labels = [f"label {k}" for k in range(n_labels)]
    for _ in range(20):
        logits = rng.normal(scale=3.0, size=(n_labels, len(id2label))).astype(np.float32)
        expected = _pipeline_scores(logits, labels, label_ids.entailment_id, multi_label)
        got = zero_shot_scores(logits, label_ids, multi_label)
        np.testing.assert_allclose(got, expected, atol=TOLERANCE)


def test_single_label_scores_sum_to_one() -> None:
    logits = np.array([[0.1, 0.2, 3.0], [1.0, 0.0, -2.0], [0.0, 0.0, 0.5]], dtype=np.float32)
    scores = zero_shot_scores(
        logits,
        resolve_label_ids({"contradiction": 0, "neutral": 1, "entailment": 2}),
        multi_label=False,
    )
    assert scores.sum() == pytest.approx(1.0)
    assert scores.argmax() == 0


def test_extreme_logits_do_not_overflow() -> None:
    label_ids = resolve_label_ids({"contradiction": 0, "neutral": 1, "entailment": 2})
    logits = np.array([[-1000.0, 0.0, 1000.0], [1000.0, 0.0, -1000.0]], dtype=np.float32)
    multi = zero_shot_scores(logits, label_ids, multi_label=True)
    single = zero_shot_scores(logits, label_ids, multi_label=False)
    np.testing.assert_allclose(multi, [1.0, 0.0])
    np.testing.assert_allclose(single, [1.0, 0.0])


def test_logits_of_the_wrong_shape_are_refused() -> None:
    label_ids = resolve_label_ids({"contradiction": 0, "neutral": 1, "entailment": 2})
    with pytest.raises(ValueError, match="n_labels"):
        zero_shot_scores(np.zeros((0, 3), dtype=np.float32), label_ids, multi_label=False)
