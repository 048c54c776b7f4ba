"""GELU fused into the feed-forward's first product: logits as close to float32's as before.

Fused or not, bfloat16 rounds differently, so each is compared with the float32
model: the fused one may stray from it no more than the separate one does,
give or take `SLACK`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.unit.nli.test_pooled import logits, pairs
from worker.nli.fused import LinearGelu, fuse_feed_forward_gelu
from worker.nli.loading import load_model
from worker.nli.pooled import pool_last_layer

CPU = torch.device("cpu")
SLACK = 1.5


def assert_as_close_to_float32(
    found: torch.Tensor, separate: torch.Tensor, float32: torch.Tensor
) -> None:
    strayed, before = (found - float32).abs().max(), (separate - float32).abs().max()
    assert strayed <= SLACK * before, f"{strayed:.3f} from float32, against {before:.3f}"


@pytest.mark.parametrize("family", ["bart", "deberta"])
def test_fused_feed_forward_keeps_the_logits(
    family: str, tiny_bart_dir: Path, tiny_deberta_dir: Path
) -> None:
    directory = str(tiny_bart_dir if family == "bart" else tiny_deberta_dir)
    float32 = load_model(directory, CPU, torch.float32)
    separate = load_model(directory, CPU, torch.bfloat16)
    fused = load_model(directory, CPU, torch.bfloat16)
    config = fused.model.config
    layers = config.encoder_layers + config.decoder_layers if family == "bart" else None
    count = fuse_feed_forward_gelu(fused.model)
    assert count == (layers or config.num_hidden_layers)
    inputs = pairs(separate.tokenizer)

    assert_as_close_to_float32(
        logits(fused.model, inputs), logits(separate.model, inputs), logits(float32.model, inputs)
    )


def test_the_pooled_last_layer_uses_the_fused_product(tiny_bart_dir: Path) -> None:
    float32 = load_model(str(tiny_bart_dir), CPU, torch.float32)
    separate = load_model(str(tiny_bart_dir), CPU, torch.bfloat16)
    both = load_model(str(tiny_bart_dir), CPU, torch.bfloat16)
    pool_last_layer(both.model)
    fuse_feed_forward_gelu(both.model)
    inputs = pairs(separate.tokenizer)

    assert_as_close_to_float32(
        logits(both.model, inputs), logits(separate.model, inputs), logits(float32.model, inputs)
    )


def test_only_exact_gelu_is_fused(tiny_bart_dir: Path) -> None:
    loaded = load_model(str(tiny_bart_dir), CPU, torch.bfloat16)
    layers = loaded.model.model.encoder.layers
    layers[0].activation_fn = nn.GELU(approximate="tanh")

    fused = fuse_feed_forward_gelu(loaded.model)

    assert fused == len(layers) + len(loaded.model.model.decoder.layers) - 1
    assert isinstance(layers[0].fc1, nn.Linear), "an approximate GELU stays apart"
    assert isinstance(layers[1].fc1, LinearGelu)
