"""A bfloat16 model's products on a CPU: oneDNN calls on weights packed once, GELU fused.

torch's `Linear` in bfloat16 hands oneDNN the weight in torch's row-major
layout, and oneDNN reorders it into the blocked layout its kernels read, at
every call: a pass over the whole weight for each product, whatever the batch.
Packing each weight once at load (`mkldnn._reorder_linear_weight`) and calling
the product on the packed weight (`mkldnn._linear_pointwise`) leaves that out;
the arithmetic is the same (the tests find the outputs bit for bit equal).
`python -m bench.levers` measures it (the "products as torch's Linear"
variant).

The feed-forward's first product also takes its GELU as a oneDNN post-op:
eager torch writes that product's output (4d values per token), reads it back
to apply GELU and writes it again; the post-op applies GELU to each tile while
it is still in cache. That result differs from the separate GELU only by
bfloat16 rounding. Feed-forwards are found by their attribute pairs: BART's
(`fc1`, `activation_fn`) and the BERT family's intermediate (`dense`,
`intermediate_act_fn`, DeBERTa included), when the activation is exact GELU.
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
# oneDNN's post-ops by name (none, or GELU), and the GELU's form: "none" is the
# exact (erf) one, not the tanh approximation.
NO_ACTIVATION = "none"
GELU = "gelu"
EXACT = "none"
# The rows per product the packed layout is chosen for: a forward pass of the
# CPU's token budget runs products of a few hundred to a few thousand rows.
PACKED_FOR_ROWS = 1024


class PackedLinear(nn.Module):
    """`activation(linear(x))` as one oneDNN product on the linear's weight, packed once."""

    def __init__(self, linear: nn.Linear, activation: str = NO_ACTIVATION) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Not a parameter: the packed layout is oneDNN's alone (no state dict, no copies).
        self.packed = torch.ops.mkldnn._reorder_linear_weight(
            linear.weight.detach(), PACKED_FOR_ROWS
        )
        self.bias = linear.bias
        self.activation = activation

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            hidden_states, self.packed, self.bias, self.activation, [], EXACT
        )

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, activation={self.activation}"


def pack_products(model: PreTrainedModel, fuse_gelu: bool = True) -> int:
    """Pack every `Linear` of a bfloat16 CPU model, GELU fused where `fuse_gelu`; returns
    how many were packed.

    Packs none where this torch build or CPU cannot run the packed product in
    bfloat16 (a probe tries it first): the layers stay as they are.
    """
    if not _packed_product_runs():
        log.info("packed bfloat16 products are not available here: the layers stay torch's")
        return 0
    gelus = 0
    if fuse_gelu:
        for module in list(model.modules()):
            for product, activation in FEED_FORWARD_PAIRS:
                linear, act = getattr(module, product, None), getattr(module, activation, None)
                if isinstance(linear, nn.Linear) and _exact_gelu(act):
                    setattr(module, product, PackedLinear(linear, GELU))
                    setattr(module, activation, nn.Identity())
                    gelus += 1
    linears = [
        (module, name, child)
        for module in model.modules()
        for name, child in module.named_children()
        if isinstance(child, nn.Linear)
    ]
    for module, name, linear in linears:
        setattr(module, name, PackedLinear(linear))
    log.info("%d products packed for oneDNN, %d with GELU fused", gelus + len(linears), gelus)
    return gelus + len(linears)


def _exact_gelu(module: object) -> bool:
    """transformers' "gelu" activation (the erf form), not an approximation of it."""
    return type(module) is GELUActivation and module.act is nn.functional.gelu


def _packed_product_runs() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    probe = torch.ones(2, 4, dtype=torch.bfloat16)
    try:
        with torch.inference_mode():
            packed = torch.ops.mkldnn._reorder_linear_weight(probe, 2)
            torch.ops.mkldnn._linear_pointwise(probe, packed, None, GELU, [], EXACT)
    except (RuntimeError, AttributeError):
        return False
    return True
