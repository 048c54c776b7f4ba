"""BART's last decoder layer computed on the row its head reads: the same logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.texts import fortunes
from worker.nli.loading import load_model
from worker.nli.pooled import PooledRowLayer, pool_last_layer

CPU = torch.device("cpu")
HYPOTHESES = ("This example is computers.", "This example is food.", "This example is love.")
# The same products on fewer rows: float32 rounding, nothing more.
FLOAT32_TOLERANCE = 1e-5
# bfloat16 keeps ~3 significant digits; the tiny model's logits are a few units large.
BFLOAT16_TOLERANCE = 0.1


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


def test_pooled_last_layer_in_bfloat16(tiny_bart_dir: Path) -> None:
    whole = load_model(str(tiny_bart_dir), CPU, torch.bfloat16)
    pooled = load_model(str(tiny_bart_dir), CPU, torch.bfloat16)
    pool_last_layer(pooled.model)
    inputs = pairs(whole.tokenizer)

    expected, found = logits(whole.model, inputs), logits(pooled.model, inputs)

    assert torch.allclose(found, expected, atol=BFLOAT16_TOLERANCE, rtol=0)
    assert torch.equal(found.argmax(-1), expected.argmax(-1))


def test_a_pair_alone_scores_as_in_a_padded_batch(tiny_bart_dir: Path) -> None:
    """The row read depends on each pair's own length, not the batch's width."""
    loaded = load_model(str(tiny_bart_dir), CPU, torch.float32)
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


def test_other_families_run_whole(tiny_deberta_dir: Path) -> None:
    loaded = load_model(str(tiny_deberta_dir), CPU, torch.float32)
    inputs = pairs(loaded.tokenizer)
    before = logits(loaded.model, inputs)

    assert not pool_last_layer(loaded.model)
    assert torch.equal(logits(loaded.model, inputs), before)
