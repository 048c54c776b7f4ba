"""Forward batches under a padded-token budget: how a classifier cuts its pairs.

As text-embeddings-inference does: pairs sorted by length, a batch padded to
its longest pair, closed before its padded size passes the budget or before
padding would waste more than MAX_PADDING of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from config.settings import GPU_BATCHING, BatchingSettings

# The budget of one forward batch is the worker's one token budget,
# `batching.max_tokens`: these are its defaults per device, set in one place
# (config.settings), for callers that do not say.
CPU_MAX_BATCH_TOKENS: int = BatchingSettings.model_fields["max_tokens"].default
CUDA_MAX_BATCH_TOKENS = GPU_BATCHING["max_tokens"]

# Padding is work thrown away, so a batch also closes before a pair this much
# shorter than its width, once it is big enough to run at full speed: from
# MIN_BATCH_TOKENS real tokens. On two AVX2 cores a 1024x4096 float32 product
# runs at ~70% of peak with 64 rows and ~90% from 256; 512 keeps clear of the
# slope. A GPU needs far more rows (see CUDA_MAX_BATCH_TOKENS).
MAX_PADDING = 0.1
CPU_MIN_BATCH_TOKENS = 512
CUDA_MIN_BATCH_TOKENS = 32768


def default_max_batch_tokens(device: torch.device) -> int:
    """The padded-token budget per forward batch that suits `device`."""
    return CUDA_MAX_BATCH_TOKENS if device.type == "cuda" else CPU_MAX_BATCH_TOKENS


def default_min_batch_tokens(device: torch.device) -> int:
    """The real tokens from which a batch on `device` runs at full speed (see MAX_PADDING)."""
    return CUDA_MIN_BATCH_TOKENS if device.type == "cuda" else CPU_MIN_BATCH_TOKENS


def plan_batches(
    lengths: Sequence[int],
    keys: Sequence[int],
    max_batch_tokens: int,
    min_batch_tokens: int | None = None,
) -> list[list[int]]:
    """Cut pairs into forward batches whose padded size stays within the budget.

    Pairs are sorted longest first within each key, so a batch is padded to its
    first pair's length; a batch closes when one more pair would push
    `longest * count` past `max_batch_tokens`. Once it holds `min_batch_tokens`
    real tokens (None: never), it also closes before a pair more than
    MAX_PADDING shorter than its first. A pair longer than the budget gets a
    batch of its own. Returns the pairs' indices, batch by batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (keys[i], -lengths[i]))
    batches: list[list[int]] = []
    width = real = 0
    for i in order:
        current = batches[-1] if batches else None
        wasteful = (
            min_batch_tokens is not None
            and real >= min_batch_tokens
            and lengths[i] < width * (1 - MAX_PADDING)
        )
        if (
            current is not None
            and keys[current[0]] == keys[i]
            and width * (len(current) + 1) <= max_batch_tokens
            and not wasteful
        ):
            current.append(i)
            real += lengths[i]
        else:
            batches.append([i])
            width = real = lengths[i]
    return batches
