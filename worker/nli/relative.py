"""DeBERTa-v2/v3's relative-position attention terms on the distances a sequence has.

transformers scores each layer's content-to-position and position-to-content
terms against every relative-position bucket (512 in DeBERTa-v3), then
gathers the n columns each of the n rows needs through an index as large as
the attention matrix, copied out per head: for a pair of n tokens, products
over 512 columns a row where 2n - 1 distances occur, and an n-by-n index per
head.

Where the distances are plain (no log bucket reached: |i - j| at most half the
buckets, so pairs of up to 129 tokens in v3, any length within the span
unbucketed), the terms are scored against the 2n - 1 buckets the distances
reach and read off by a strided view (the relative shift of Transformer-XL):
row i of content-to-position is a contiguous slice of its scores, shifted by
i. Longer sequences are scored against every bucket, as transformers does,
and read through one n-by-n index that every head shares. The logits are
transformers' own within float32 rounding (tests/unit/nli/test_relative.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

import torch
from torch import nn
from transformers import DebertaV2ForSequenceClassification, PreTrainedModel
from transformers.models.deberta_v2.modeling_deberta_v2 import (
    DebertaV2Layer,
    DisentangledSelfAttention,
)

T = TypeVar("T")


class WindowedRelativeAttention(nn.Module):
    """A `DisentangledSelfAttention` whose relative terms cover only the distances present."""

    def __init__(self, attention: DisentangledSelfAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
        query_states: torch.Tensor | None = None,
        relative_pos: torch.Tensor | None = None,
        rel_embeddings: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention = self.attention
        length = hidden_states.shape[1]
        if (
            output_attentions
            or query_states is not None
            or relative_pos is None
            or rel_embeddings is None
            or not attention.relative_attention
        ):
            return attention(
                hidden_states,
                attention_mask,
                output_attentions,
                query_states=query_states,
                relative_pos=relative_pos,
                rel_embeddings=rel_embeddings,
            )
        query, key, value, scale, scores = content_scores(attention, hidden_states, hidden_states)
        positions, reads = _relative_reads(attention, length, relative_pos, rel_embeddings)
        if "c2p" in attention.pos_att_type:
            by_distance = torch.matmul(query, position_keys(attention, positions.c2p))
            scores = scores + reads.c2p(by_distance) / scale
        if "p2c" in attention.pos_att_type:
            by_distance = torch.matmul(key, position_queries(attention, positions.p2c))
            scores = scores + reads.p2c(by_distance).transpose(-1, -2) / scale
        return attend(scores, attention_mask, value), None


def per_head(attention: DisentangledSelfAttention, states: torch.Tensor) -> torch.Tensor:
    """(batch, rows, hidden) as (batch, heads, rows, head size)."""
    heads = attention.num_attention_heads
    split = attention.transpose_for_scores(states, heads)
    return split.view(states.shape[0], heads, *split.shape[1:])


def content_scores(
    attention: DisentangledSelfAttention, query_states: torch.Tensor, hidden_states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries (of `query_states`' rows), keys and values per head, the scale every term
    is divided by, and the content-to-content scores, as transformers computes them."""
    query = per_head(attention, attention.query_proj(query_states))
    key = per_head(attention, attention.key_proj(hidden_states))
    value = per_head(attention, attention.value_proj(hidden_states))
    kinds = attention.pos_att_type
    scale_factor = 1 + ("c2p" in kinds) + ("p2c" in kinds)
    scale = torch.sqrt(torch.tensor(query.size(-1), dtype=torch.float) * scale_factor)
    scale = scale.to(dtype=query.dtype)
    return query, key, value, scale, torch.matmul(query, key.transpose(-1, -2) / scale)


def position_keys(attention: DisentangledSelfAttention, positions: torch.Tensor) -> torch.Tensor:
    """The (1, heads, head size, buckets) keys of position embeddings, for content to
    position."""
    projection = attention.key_proj if attention.share_att_key else attention.pos_key_proj
    return per_head(attention, projection(positions)).transpose(-1, -2)


def position_queries(attention: DisentangledSelfAttention, positions: torch.Tensor) -> torch.Tensor:
    """The (1, heads, head size, buckets) queries of position embeddings, for position to
    content."""
    projection = attention.query_proj if attention.share_att_key else attention.pos_query_proj
    return per_head(attention, projection(positions)).transpose(-1, -2)


def attend(scores: torch.Tensor, mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Softmax of the (batch, heads, rows, keys) scores under the mask, over the values:
    (batch, rows, hidden)."""
    probabilities = nn.functional.softmax(
        scores.masked_fill(~mask.bool(), torch.finfo(scores.dtype).min), dim=-1
    )
    context = torch.matmul(probabilities, value)
    return context.permute(0, 2, 1, 3).reshape(scores.shape[0], scores.shape[2], -1)


class _Terms(NamedTuple, Generic[T]):
    """One thing for each relative term: content to position, position to content."""

    c2p: T
    p2c: T


Read = Callable[[torch.Tensor], torch.Tensor]


def _relative_reads(
    attention: DisentangledSelfAttention,
    length: int,
    relative_pos: torch.Tensor,
    rel_embeddings: torch.Tensor,
) -> tuple[_Terms[torch.Tensor], _Terms[Read]]:
    """The position embeddings each term is scored against, and how its (…, n, buckets)
    scores are read as (…, n, n): row i by key j for content to position, row j (a key) by
    query i for position to content."""
    span = attention.pos_ebd_size
    if plain_distances(attention, length):
        # Bucket span + d for a distance d = i - j, d from -(n - 1) to n - 1.
        window = rel_embeddings[span - length + 1 : span + length].unsqueeze(0)
        # Content to position from distance n - 1 down: row i's keys j = 0.. are then
        # columns n - 1 - i + j. Position to content: key j's query i, column n - 1 + i - j.
        return _Terms(window.flip(1), window), _Terms(_shifted, _shifted)
    # Every bucket, read through one n-by-n index that every head shares (transformers
    # expands it to every head, and copies it).
    positions = rel_embeddings[: span * 2].unsqueeze(0)
    buckets = relative_pos.reshape(length, length).to(torch.long)  # [a, b]: of a - b
    rows = torch.arange(length, device=buckets.device)[:, None]
    to_key = torch.clamp(buckets + span, 0, span * 2 - 1)
    from_key = torch.clamp(-buckets + span, 0, span * 2 - 1)
    return _Terms(positions, positions), _Terms(
        lambda scores: scores[..., rows, to_key], lambda scores: scores[..., rows, from_key]
    )


def _shifted(scores: torch.Tensor) -> torch.Tensor:
    """(…, n, 2n - 1) scores as (…, n, n): row r's columns n - 1 - r to 2n - 2 - r."""
    *outer, rows, columns = scores.shape
    scores = scores.contiguous()
    strides = scores.stride()
    return scores.as_strided(
        (*outer, rows, rows),
        (*strides[:-2], columns - 1, 1),
        scores.storage_offset() + rows - 1,
    )


def plain_distances(attention: DisentangledSelfAttention, length: int) -> bool:
    """Whether every distance of a `length`-token sequence is its own bucket, inside the
    embedding's span: then bucket = span + i - j."""
    if not attention.relative_attention or length > attention.pos_ebd_size:
        return False
    buckets = attention.position_buckets
    return buckets <= 0 or length - 1 <= buckets // 2


def window_relative_attention(model: PreTrainedModel) -> int:
    """Window the relative terms of every whole DeBERTa-v2/v3 layer; returns how many.

    Layers replaced by others (the pooled last one) are left as they are.
    """
    if not isinstance(model, DebertaV2ForSequenceClassification):
        return 0
    windowed = 0
    for layer in model.deberta.encoder.layer:
        if (
            type(layer) is DebertaV2Layer
            and type(layer.attention.self) is DisentangledSelfAttention
        ):
            windowed_attention = WindowedRelativeAttention(layer.attention.self)
            layer.attention.self = windowed_attention  # type: ignore[assignment]
            windowed += 1
    return windowed
