"""The last layer computed on the row the head reads (BART's last `</s>`, DeBERTa-v2/v3's first
token): the same logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    DebertaConfig,
    DebertaForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
)

from tests.texts import fortunes
from worker.demo_model import TINY_DEBERTA
from worker.nli.loading import load_model
from worker.nli.pooled import PooledFirstRowLayer, PooledRowLayer, pool_last_layer

CPU = torch.device("cpu")
HYPOTHESES = ("This example is computers.", "This example is food.", "This example is love.")
# The same products on fewer rows: float32 rounding, nothing more.
FLOAT32_TOLERANCE = 1e-5
FAMILIES = ["tiny_bart_dir", "tiny_deberta_dir"]


def pairs(tokenizer: object, count: int = 6) -> dict[str, torch.Tensor]:
    """Premise/hypothesis pairs of varied lengths, right-padded as the classifier pads them."""
    premises = [text for text in fortunes(count) for _ in HYPOTHESES]
    hypotheses = list(HYPOTHESES) * count
    encoded = tokenizer(  # type: ignore[operator]
        premises, hypotheses, padding=True, truncation="only_first", return_tensors="pt"
    )
    return {name: encoded[name] for name in ("input_ids", "attention_mask")}


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        result: torch.Tensor = model(**inputs, use_cache=False).logits
    return result.float()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_pooled_last_layer_keeps_the_logits(tiny_bart_dir: Path, attention: str) -> None:
    whole = load_model(str(tiny_bart_dir), CPU, torch.float32, attention)
    pooled = load_model(str(tiny_bart_dir), CPU, torch.float32, attention)
    assert pool_last_layer(pooled.model)
    inputs = pairs(whole.tokenizer)
    assert (inputs["attention_mask"] == 0).any(), "the batch must hold padding"

    expected, found = logits(whole.model, inputs), logits(pooled.model, inputs)

    assert torch.allclose(found, expected, atol=FLOAT32_TOLERANCE, rtol=0)


def test_pooled_deberta_keeps_the_logits(tiny_deberta_dir: Path) -> None:
    whole = load_model(str(tiny_deberta_dir), CPU, torch.float32)
    pooled = load_model(str(tiny_deberta_dir), CPU, torch.float32)
    assert pool_last_layer(pooled.model)
    inputs = pairs(whole.tokenizer)
    assert (inputs["attention_mask"] == 0).any(), "the batch must hold padding"

    expected, found = logits(whole.model, inputs), logits(pooled.model, inputs)

    assert torch.allclose(found, expected, atol=FLOAT32_TOLERANCE, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_pooled_last_layer_in_bfloat16(family: str, request: pytest.FixtureRequest) -> None:
    directory = str(request.getfixturevalue(family))
    reference = load_model(directory, CPU, torch.float32)
    whole = load_model(directory, CPU, torch.bfloat16)
    pooled = load_model(directory, CPU, torch.bfloat16)
    pool_last_layer(pooled.model)
    inputs = pairs(whole.tokenizer)

    exact = logits(reference.model, inputs)
    expected, found = logits(whole.model, inputs), logits(pooled.model, inputs)

    # Rounded at other places: the two bfloat16 passes differ by less than the whole layer's
    # own rounding moves it from float32, and the pooled one is not further from float32.
    rounding = (expected - exact).abs().max()
    assert (found - expected).abs().max() < rounding
    assert torch.equal(found.argmax(-1), expected.argmax(-1))
    assert (found - exact).abs().max() <= 1.5 * rounding


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pair_alone_scores_as_in_a_padded_batch(
    family: str, request: pytest.FixtureRequest
) -> None:
    """The row read depends on each pair's own length, not the batch's width."""
    loaded = load_model(str(request.getfixturevalue(family)), CPU, torch.float32)
    pool_last_layer(loaded.model)
    inputs = pairs(loaded.tokenizer)
    batched = logits(loaded.model, inputs)
    length = int(inputs["attention_mask"][0].sum())

    alone = logits(loaded.model, {name: array[:1, :length] for name, array in inputs.items()})

    assert torch.allclose(alone[0], batched[0], atol=FLOAT32_TOLERANCE, rtol=0)


def test_only_the_last_layer_is_replaced(tiny_bart_dir: Path) -> None:
    loaded = load_model(str(tiny_bart_dir), CPU, torch.float32)
    pool_last_layer(loaded.model)
    layers = loaded.model.model.decoder.layers
    assert isinstance(layers[-1], PooledRowLayer)
    assert not any(isinstance(layer, PooledRowLayer) for layer in layers[:-1])


def test_only_the_last_deberta_layer_is_replaced(tiny_deberta_dir: Path) -> None:
    loaded = load_model(str(tiny_deberta_dir), CPU, torch.float32)
    pool_last_layer(loaded.model)
    layers = loaded.model.deberta.encoder.layer
    assert isinstance(layers[-1], PooledFirstRowLayer)
    assert not any(isinstance(layer, PooledFirstRowLayer) for layer in layers[:-1])


# DeBERTa-v2 attention as other checkpoints configure it: separate position
# projections, one relative term of two, unbucketed distances, none at all.
DEBERTA_ATTENTION: dict[str, dict[str, Any]] = {
    "separate position projections": {"share_att_key": False},
    "content to position only": {"share_att_key": False, "pos_att_type": ["c2p"]},
    "position to content only": {"pos_att_type": ["p2c"]},
    "distances not bucketed": {"position_buckets": -1, "max_relative_positions": 16},
    "absolute positions only": {"relative_attention": False, "position_biased_input": True},
}


@pytest.mark.parametrize("attention", DEBERTA_ATTENTION.values(), ids=DEBERTA_ATTENTION.keys())
def test_pooled_deberta_keeps_the_logits_of_every_attention_kind(attention: dict[str, Any]) -> None:
    config = DebertaV2Config(**(TINY_DEBERTA | {"vocab_size": 50, "num_labels": 3} | attention))
    torch.manual_seed(0)
    whole = DebertaV2ForSequenceClassification(config).eval()
    pooled = DebertaV2ForSequenceClassification(config).eval()
    pooled.load_state_dict(whole.state_dict())
    assert pool_last_layer(pooled)
    mask = torch.ones(4, 20, dtype=torch.long)
    mask[1:, 12:] = 0
    inputs = {"input_ids": torch.randint(1, 50, (4, 20)), "attention_mask": mask}

    expected, found = logits(whole, inputs), logits(pooled, inputs)

    assert torch.allclose(found, expected, atol=FLOAT32_TOLERANCE, rtol=0)


def test_other_families_run_whole() -> None:
    """DeBERTa (v1) computes its attention otherwise: its last layer stays whole."""
    config = DebertaConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )
    model = DebertaForSequenceClassification(config).eval()
    inputs = {"input_ids": torch.randint(1, 50, (2, 10))}
    before = logits(model, inputs)

    assert not pool_last_layer(model)
    assert torch.equal(logits(model, inputs), before)
