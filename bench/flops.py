"""Model FLOPs of a pair and the measured matmul peak: the two sides of a utilisation figure.

Only matrix products are counted (projections, feed-forward, attention scores
and their weighted sums), as model-FLOP-utilisation figures usually do; layer
norms, softmax and activations are memory traffic, not FLOPs worth counting.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from transformers import PretrainedConfig

# A multiply-add is two floating-point operations.
FLOPS_PER_MAC = 2
# The peak is the best of repeated products: the first ones warm caches and
# kernels up, and contention on a shared machine only ever makes one slower.
PEAK_MIN_REPEATS = 3
# Shapes of the peak measurement (tokens x inputs x outputs). On a CPU, the
# model's own largest product (a feed-forward layer over a 2048-token batch);
# on a GPU the customary 8192-cube, which that device needs to be saturated.
CPU_PEAK_SHAPE = (2048, 1024, 4096)
GPU_PEAK_SHAPE = (8192, 8192, 8192)


def pair_flops(config: PretrainedConfig, length: int) -> float:
    """Matmul FLOPs of one premise/hypothesis pair of `length` tokens through an NLI classifier.

    BART-like (encoder-decoder): the encoder reads the pair; the decoder reads
    it again (shifted), attending to itself and to the encoder; the head reads
    one token. Encoder-only (BERT, RoBERTa, DeBERTa): the layers read the pair
    once; DeBERTa's relative-position attention terms are not counted, so its
    utilisation is understated a little.
    """
    n = length
    if config.is_encoder_decoder:
        d = config.d_model
        encoder_layers, encoder_ffn_dim = config.encoder_layers, config.encoder_ffn_dim
    else:
        d = config.hidden_size
        encoder_layers, encoder_ffn_dim = config.num_hidden_layers, config.intermediate_size
    projections = 4 * n * d * d  # query, key, value, output
    attention = 2 * n * n * d  # scores and their weighted sum
    encoder = encoder_layers * (projections + attention + 2 * n * d * encoder_ffn_dim)
    decoder = 0
    if config.is_encoder_decoder:
        # Self-attention, then cross-attention (its keys and values over the encoder's n).
        decoder_ffn = 2 * n * d * config.decoder_ffn_dim
        decoder = config.decoder_layers * (2 * projections + 2 * attention + decoder_ffn)
    head = d * d + d * config.num_labels
    return float(FLOPS_PER_MAC * (encoder + decoder + head))


def model_flops(config: PretrainedConfig, lengths: Iterable[int]) -> float:
    """Matmul FLOPs of every pair, padding excluded: the work a forward pass must do."""
    return sum(pair_flops(config, n) for n in lengths)


def matmul_peak(dtype: torch.dtype, device: torch.device, budget_s: float = 3.0) -> float:
    """The best FLOP/s a `torch.nn.functional.linear` product of the peak shape reaches.

    `linear` (inputs times transposed weights) is the path a Linear layer takes;
    on CPUs without native bfloat16 it is also many times faster than `a @ b`.
    Repeats for about `budget_s` seconds (at least `PEAK_MIN_REPEATS` times).
    """
    rows, inputs, outputs = GPU_PEAK_SHAPE if device.type == "cuda" else CPU_PEAK_SHAPE
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, inputs, generator=generator).to(device, dtype)
    w = torch.randn(outputs, inputs, generator=generator).to(device, dtype)
    flops = FLOPS_PER_MAC * rows * inputs * outputs
    best = 0.0
    deadline = time.perf_counter() + budget_s
    repeats = 0
    with torch.inference_mode():
        torch.nn.functional.linear(x, w)  # warm-up: kernel selection, first-touch memory
        while repeats < PEAK_MIN_REPEATS or time.perf_counter() < deadline:
            _synchronize(device)
            started = time.perf_counter()
            torch.nn.functional.linear(x, w)
            _synchronize(device)
            best = max(best, flops / (time.perf_counter() - started))
            repeats += 1
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
