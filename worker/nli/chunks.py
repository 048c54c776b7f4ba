"""Long texts scored whole: a premise cut into overlapping token windows, scores aggregated.

A premise longer than the room its longest hypothesis leaves is cut into
windows of `window` tokens that overlap by `stride`: chunk k covers premise
tokens [k*(window-stride), k*(window-stride)+window), the last one cut at the
premise's end. Each chunk is scored as the pipeline scores a premise; a
label's score is then the max or the mean of its chunks' scores. Pure
arithmetic, no tokenizer and no model.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from worker.errors import InferenceError, TooManyChunksError

TokenRange = tuple[int, int]
"""Premise tokens [start, end), special tokens not counted."""


class Aggregate(enum.Enum):
    """How a label's chunk scores become its score."""

    MAX = "max"
    """Its best chunk's: one passage that matches is enough (moderation)."""
    MEAN = "mean"
    """The average over the chunks: the text as a whole."""


@dataclass(frozen=True, slots=True)
class Chunking:
    """A topic's `long_text` settings when its long texts are chunked."""

    window: int
    stride: int
    aggregate: Aggregate
    max_chunks: int

    def __post_init__(self) -> None:
        if not 0 <= self.stride < self.window or self.max_chunks < 1:
            raise ValueError("need 0 <= stride < window and max_chunks >= 1")


def windows(length: int, window: int, stride: int) -> tuple[TokenRange, ...]:
    """The chunks of a premise of `length` tokens: as few as cover it, in order.

    Chunk k is [k*(window-stride), k*(window-stride)+window), the last cut at
    `length`; a premise of `window` tokens or fewer is one chunk.
    """
    if not 0 <= stride < window:
        raise ValueError(f"need 0 <= stride < window, got window {window}, stride {stride}")
    step = window - stride
    count = 1 + max(0, -(-(length - window) // step))
    return tuple((k * step, min(k * step + window, length)) for k in range(count))


def plan_chunks(premise_len: int, room: int, long_text: Chunking) -> tuple[TokenRange, ...]:
    """The chunks of a premise of `premise_len` tokens with `room` tokens beside its hypotheses.

    `room` is what the model's max length leaves beside the longest
    hypothesis and the special tokens: the pipeline would truncate a longer
    premise, and only such a premise is chunked (else: no chunks, it is scored
    whole). A window wider than `room` is narrowed to it, so that no chunk is
    truncated in turn. Raises `TooManyChunksError` past `max_chunks`.
    """
    if premise_len <= room:
        return ()
    width = min(long_text.window, room)
    if width <= long_text.stride:
        raise InferenceError(
            f"the longest hypothesis leaves room for {max(room, 0)} premise tokens, not more"
            f" than long_text.stride {long_text.stride}: the text cannot be chunked"
        )
    found = windows(premise_len, width, long_text.stride)
    if len(found) > long_text.max_chunks:
        raise TooManyChunksError(
            f"the text has {premise_len} tokens: {len(found)} chunks of {width} tokens"
            f" overlapping by {long_text.stride}, over long_text.max_chunks {long_text.max_chunks}"
        )
    return found


@dataclass(frozen=True, slots=True)
class ChunkScores:
    """How a chunked event's scores came about, for the output's `classification.chunks`.

    `best[i]` is the chunk that gave the task's i-th label its score under
    `Aggregate.MAX` (empty under MEAN, where every chunk does); `group_best`
    is the same for each label group.
    """

    windows: tuple[TokenRange, ...]
    aggregate: Aggregate
    best: tuple[int, ...] = ()
    group_best: tuple[tuple[int, ...], ...] = ()

    @property
    def count(self) -> int:
        """How many chunks the text was scored in."""
        return len(self.windows)


def aggregate(
    per_chunk: Sequence[Sequence[float]], how: Aggregate
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Each label's score over the chunks (rows: chunks, columns: labels).

    Returns the scores and, under MAX, the chunk each label's score came from
    (the first of equal ones); under MEAN, no chunks.
    """
    scores = np.asarray(per_chunk, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"expected scores of shape (chunks, labels), got {scores.shape}")
    if how is Aggregate.MEAN:
        return tuple(scores.mean(axis=0).tolist()), ()
    best: npt.NDArray[np.intp] = scores.argmax(axis=0)
    return tuple(scores.max(axis=0).tolist()), tuple(int(k) for k in best)
