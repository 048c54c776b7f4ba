"""Products on weights packed once for oneDNN, and GELU fused into the feed-forward's first.

Packing changes the weight's layout, not the arithmetic: the logits are the
same bit for bit. Fused or not, GELU in bfloat16 rounds differently, so each is
compared with the float32 model: the fused one may stray from it no more than
the separate one does, give or take `SLACK`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.unit.nli.test_pooled import logits, pairs
from worker.nli.loading import LoadedModel, load_model
from worker.nli.packed import GELU, NO_ACTIVATION, PackedLinear, pack_products
from worker.nli.pooled import pool_last_layer

CPU = torch.device("cpu")
SLACK = 1.5
FAMILIES = ["tiny_bart_dir", "tiny_deberta_dir"]


def assert_as_close_to_float32(
    found: torch.Tensor, separate: torch.Tensor, float32: torch.Tensor
) -> None:
    strayed, before = (found - float32).abs().max(), (separate - float32).abs().max()
    assert strayed <= SLACK * before, f"{strayed:.3f} from float32, against {before:.3f}"


def linears(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear | PackedLinear)]


def feed_forwards(loaded: LoadedModel) -> int:
    config = loaded.model.config
    if config.model_type == "bart":
        return int(config.encoder_layers + config.decoder_layers)
    return int(config.num_hidden_layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_weights_give_the_same_logits_bit_for_bit(
    family: str, request: pytest.FixtureRequest
) -> None:
    directory = str(request.getfixturevalue(family))
    plain = load_model(directory, CPU, torch.bfloat16)
    packed = load_model(directory, CPU, torch.bfloat16)
    count = len(linears(packed.model))

    assert pack_products(packed.model, fuse_gelu=False) == count
    assert all(isinstance(m, PackedLinear) for m in linears(packed.model))
    inputs = pairs(plain.tokenizer)
    assert (inputs["attention_mask"] == 0).any(), "the batch must hold padding"
    assert torch.equal(logits(packed.model, inputs), logits(plain.model, inputs))


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_feed_forward_keeps_the_logits(family: str, request: pytest.FixtureRequest) -> None:
    directory = str(request.getfixturevalue(family))
    float32 = load_model(directory, CPU, torch.float32)
    separate = load_model(directory, CPU, torch.bfloat16)
    fused = load_model(directory, CPU, torch.bfloat16)
    pack_products(fused.model)
    gelus = [m for m in linears(fused.model) if m.activation == GELU]
    assert len(gelus) == feed_forwards(fused)
    inputs = pairs(separate.tokenizer)

    assert_as_close_to_float32(
        logits(fused.model, inputs), logits(separate.model, inputs), logits(float32.model, inputs)
    )


def test_the_pooled_last_layer_uses_the_packed_products(tiny_bart_dir: Path) -> None:
    float32 = load_model(str(tiny_bart_dir), CPU, torch.float32)
    separate = load_model(str(tiny_bart_dir), CPU, torch.bfloat16)
    both = load_model(str(tiny_bart_dir), CPU, torch.bfloat16)
    pool_last_layer(both.model)
    pack_products(both.model)
    assert not any(isinstance(m, nn.Linear) for m in both.model.modules())
    inputs = pairs(separate.tokenizer)

    assert_as_close_to_float32(
        logits(both.model, inputs), logits(separate.model, inputs), logits(float32.model, inputs)
    )


def test_only_exact_gelu_is_fused(tiny_bart_dir: Path) -> None:
    loaded = load_model(str(tiny_bart_dir), CPU, torch.bfloat16)
    layers = loaded.model.model.encoder.layers
    layers[0].activation_fn = nn.GELU(approximate="tanh")

    pack_products(loaded.model)

    assert layers[0].fc1.activation == NO_ACTIVATION, "an approximate GELU stays apart"
    assert isinstance(layers[0].activation_fn, nn.GELU)
    assert layers[1].fc1.activation == GELU
    assert isinstance(layers[1].activation_fn, nn.Identity)
