"""The forward batches static int8 is calibrated on: every calibration pair, cut as the
classifier cuts real ones, and a digest that changes with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worker.nli import int8_calibration
from worker.nli.classifier import _calibration_batches
from worker.nli.forward import ATTENTION_MASK, INPUT_IDS
from worker.nli.loading import load_model

BUDGET = 512


def test_the_batches_hold_every_text_against_every_label_under_the_budget(
    tiny_bart_dir: Path,
) -> None:
    tokenizer, model = load_model(str(tiny_bart_dir), torch.device("cpu"), torch.float32)
    names = frozenset({INPUT_IDS, ATTENTION_MASK})
    batches = _calibration_batches(str(tiny_bart_dir), tokenizer, model.config, names, BUDGET)
    pairs = len(int8_calibration.texts()) * len(int8_calibration.LABELS)
    assert sum(len(b[INPUT_IDS]) for b in batches) == pairs
    assert all(set(b) == names for b in batches)
    assert all(b[INPUT_IDS].size <= BUDGET for b in batches)
    # Of different widths, as real batches are.
    assert len({b[INPUT_IDS].shape[1] for b in batches}) > 1


def test_the_texts_are_distinct_and_of_many_lengths() -> None:
    texts = int8_calibration.texts()
    words = [len(text.split()) for text in texts]
    assert min(words) <= 3 and max(words) >= 150
    assert len(set(texts)) == len(texts)


def test_the_digest_changes_with_the_batches_and_the_quantizers_version() -> None:
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    batch = {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)}
    reshaped = {name: array.reshape(4, 3) for name, array in batch.items()}
    changed = {INPUT_IDS: ids + 1, ATTENTION_MASK: np.ones_like(ids)}
    digest = int8_calibration.digest
    assert digest([batch], "3.4.0") == digest([dict(batch)], "3.4.0")
    assert (
        len(
            {
                digest([batch], "3.4.0"),
                digest([reshaped], "3.4.0"),
                digest([changed], "3.4.0"),
                digest([batch], "3.5.0"),
                digest([batch, batch], "3.4.0"),
            }
        )
        == 5
    )
