"""Turn one event's NLI logits into zero-shot scores, as transformers' pipeline does.

Mirrors `ZeroShotClassificationPipeline.postprocess`: with `multi_label` (or a
single label) each label is scored on its own by a softmax over its
[contradiction, entailment] logits; otherwise the entailment logits are
softmaxed across the event's labels so the scores sum to 1. Unlike the
pipeline, the largest logit is subtracted before `exp`, so extreme logits
cannot overflow; the result is the same.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from worker.nli.labels import LabelIds


def _softmax(x: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.float64]:
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    result: npt.NDArray[np.float64] = shifted / shifted.sum(axis=axis, keepdims=True)
    return result


def zero_shot_scores(
    logits: npt.NDArray[np.floating], label_ids: LabelIds, multi_label: bool
) -> npt.NDArray[np.float64]:
    """Score one event: `logits` has one row per label and one column per NLI class.

    Returns one score per label, in the rows' order.
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"expected logits of shape (n_labels, n_classes), got {logits.shape}")
    # float64 so that the softmax adds no rounding of its own to float32 logits.
    wide = logits.astype(np.float64)
    if multi_label or wide.shape[0] == 1:
        pairs = wide[:, [label_ids.contradiction_id, label_ids.entailment_id]]
        return _softmax(pairs, axis=1)[:, 1]
    return _softmax(wide[:, label_ids.entailment_id], axis=0)
