"""The feed-forward's first product and its GELU in one oneDNN call, in bfloat16 on a CPU.

Eager torch writes the first feed-forward product's output (4d values per
token), reads it back to apply GELU and writes it again. oneDNN applies GELU to
each tile of the product while it is still in cache (a post-op), which saves
that round trip through memory: `python -m bench.levers` measures it (the
"GELU as an operator of its own" variant). The result differs from the
separate GELU only by bfloat16 rounding.

Layers found by their attribute pairs: BART's (`fc1`, `activation_fn`) and the
BERT family's intermediate (`dense`, `intermediate_act_fn`, DeBERTa included),
when the activation is exact GELU.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import GELUActivation

log = logging.getLogger(__name__)

# (product, activation) attribute pairs of a feed-forward's first half.
FEED_FORWARD_PAIRS = (("fc1", "activation_fn"), ("dense", "intermediate_act_fn"))


class LinearGelu(nn.Module):
    """`gelu(linear(x))` as one oneDNN product with a GELU post-op, on the linear's weights."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            hidden_states, self.weight, self.bias, "gelu", [], "none"
        )


def fuse_feed_forward_gelu(model: PreTrainedModel) -> int:
    """Fuse every exact-GELU feed-forward of a bfloat16 CPU model; returns how many.

    Fuses none where this torch build or CPU cannot run the fused product in bfloat16
    (a probe tries it first): the layers stay as they are.
    """
    if not _fused_product_runs():
        log.info("the fused product and GELU is not available here: GELU runs on its own")
        return 0
    fused = 0
    for module in model.modules():
        for product, activation in FEED_FORWARD_PAIRS:
            linear, act = getattr(module, product, None), getattr(module, activation, None)
            if isinstance(linear, nn.Linear) and _exact_gelu(act):
                setattr(module, product, LinearGelu(linear))
                setattr(module, activation, nn.Identity())
                fused += 1
    return fused


def _exact_gelu(module: object) -> bool:
    """transformers' "gelu" activation (the erf form), not an approximation of it."""
    return type(module) is GELUActivation and module.act is nn.functional.gelu


def _fused_product_runs() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    probe = torch.ones(2, 4, dtype=torch.bfloat16)
    try:
        with torch.inference_mode():
            torch.ops.mkldnn._linear_pointwise(probe, probe, None, "gelu", [], "none")
    except RuntimeError:
        return False
    return True
