"""DeBERTa's relative-position terms on the distances present: the same logits as
transformers' all-bucket products, and transformers' own path where distances are bucketed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

from tests.unit.nli.test_pooled import FLOAT32_TOLERANCE, logits, pairs
from worker.demo_model import TINY_DEBERTA
from worker.nli.loading import load_model
from worker.nli.pooled import pool_last_layer
from worker.nli.relative import WindowedRelativeAttention, window_relative_attention

CPU = torch.device("cpu")
VOCAB = 50
# As DeBERTa-v2 checkpoints configure their attention.
ATTENTION: dict[str, dict[str, Any]] = {
    "v3: shared keys, both terms, 256 buckets": {},
    "separate position projections": {"share_att_key": False},
    "content to position only": {"pos_att_type": ["c2p"]},
    "position to content only": {"share_att_key": False, "pos_att_type": ["p2c"]},
    "distances not bucketed": {"position_buckets": -1, "max_relative_positions": 64},
}
# Lengths on either side of where v3's log buckets start (|i - j| over 128), and
# of the unbucketed configuration's span (64).
LENGTHS = [1, 20, 64, 65, 129, 130, 200]


def twins(attention: dict[str, Any]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A DeBERTa-v2 classifier with random weights, and a copy with windowed relative terms."""
    config = DebertaV2Config(**(TINY_DEBERTA | {"vocab_size": VOCAB, "num_labels": 3} | attention))
    torch.manual_seed(0)
    whole = DebertaV2ForSequenceClassification(config).eval()
    windowed = DebertaV2ForSequenceClassification(config).eval()
    windowed.load_state_dict(whole.state_dict())
    assert window_relative_attention(windowed) == config.num_hidden_layers
    return whole, windowed


@pytest.mark.parametrize("attention", ATTENTION.values(), ids=ATTENTION.keys())
@pytest.mark.parametrize("length", LENGTHS)
def test_windowed_terms_keep_the_logits(attention: dict[str, Any], length: int) -> None:
    whole, windowed = twins(attention)
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1:, (length + 1) // 2 :] = 0
    inputs = {"input_ids": torch.randint(1, VOCAB, (3, length)), "attention_mask": mask}

    expected, found = logits(whole, inputs), logits(windowed, inputs)

    assert torch.allclose(found, expected, atol=FLOAT32_TOLERANCE, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_pairs_as_load_classifier_runs_them(
    tiny_deberta_dir: Path, dtype: torch.dtype
) -> None:
    """Pooled last layer, windowed others, on fortunes: float32 within rounding of
    transformers' own; bfloat16 no further from float32 than transformers' bfloat16."""
    directory = str(tiny_deberta_dir)
    exact = load_model(directory, CPU, torch.float32)
    whole = load_model(directory, CPU, dtype)
    fast = load_model(directory, CPU, dtype)
    assert pool_last_layer(fast.model)
    assert window_relative_attention(fast.model) == len(fast.model.deberta.encoder.layer) - 1
    inputs = pairs(whole.tokenizer)

    reference = logits(exact.model, inputs)
    expected, found = logits(whole.model, inputs), logits(fast.model, inputs)

    if dtype == torch.float32:
        assert torch.allclose(found, expected, atol=FLOAT32_TOLERANCE, rtol=0)
    else:
        assert (found - reference).abs().max() <= 1.5 * (expected - reference).abs().max()


def test_other_models_are_left_alone(tiny_bart_dir: Path) -> None:
    loaded = load_model(str(tiny_bart_dir), CPU, torch.float32)
    assert window_relative_attention(loaded.model) == 0
    assert not any(isinstance(m, WindowedRelativeAttention) for m in loaded.model.modules())
