"""Forward batches under a padded-token budget: how a classifier cuts its pairs.

As text-embeddings-inference does: pairs sorted by length, a batch padded to
its longest pair, closed before its padded size passes the budget or before
padding would waste more than MAX_PADDING of it. `plan_batches` sorts the
pairs alone; `plan_event_batches` keeps each event's pairs together, so that
an event is done after one forward pass and can be released early.
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


def plan_event_batches(
    lengths: Sequence[int],
    keys: Sequence[int],
    events: Sequence[int],
    max_batch_tokens: int,
    min_batch_tokens: int | None = None,
) -> list[list[int]]:
    """Cut pairs into forward batches as `plan_batches` does, an event's pairs kept together.

    `events[i]` says which event pair i belongs to. Events are taken longest
    first (by their longest pair; within an event, its pairs longest first),
    so the pairs are still nearly sorted by length. A batch closes before an
    event that would not fit in it whole, or, once it holds `min_batch_tokens`
    real tokens (None: never), before one whose longest pair is more than
    MAX_PADDING shorter than the batch's width; that event opens the next
    batch. An event too large for any batch is cut pair by pair under the
    same rules. The batches come back shortest first: run in that order, the
    most events are done soonest. Returns the pairs' indices, batch by batch.
    """
    units: dict[tuple[int, int], list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        units.setdefault((keys[i], events[i]), []).append(i)
    # Pairs of one event with different keys (a literal <eos> in a hypothesis)
    # form units of their own: they cannot share a batch anyway.
    order = sorted(units, key=lambda unit: (unit[0], -lengths[units[unit][0]], unit[1]))
    batches: list[list[int]] = []
    current: list[int] = []
    width = real = 0

    def joins(key: int, longest: int, count: int) -> bool:
        """Whether `count` pairs of `key`, the longest `longest`, join the open batch."""
        wasteful = (
            min_batch_tokens is not None
            and real >= min_batch_tokens
            and longest < width * (1 - MAX_PADDING)
        )
        return (
            bool(current)
            and keys[current[0]] == key
            and max(width, longest) * (len(current) + count) <= max_batch_tokens
            and not wasteful
        )

    for key, event in order:
        pairs = units[(key, event)]
        longest = lengths[pairs[0]]
        if joins(key, longest, len(pairs)):
            current.extend(pairs)
            width, real = max(width, longest), real + sum(lengths[i] for i in pairs)
        elif longest * len(pairs) <= max_batch_tokens:
            current = list(pairs)
            batches.append(current)
            width, real = longest, sum(lengths[i] for i in pairs)
        else:
            for i in pairs:
                if joins(key, lengths[i], 1):
                    current.append(i)
                    width, real = max(width, lengths[i]), real + lengths[i]
                else:
                    current = [i]
                    batches.append(current)
                    width = real = lengths[i]
    batches.reverse()
    return batches
