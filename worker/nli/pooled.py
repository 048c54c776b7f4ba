"""The last layer of a classifier, computed on the one row its head reads.

BART's classification head reads a single position of the decoder's output:
the last `</s>` of each pair. The layers before the last must run on every
position (the last layer's keys and values come from all of them), but the
last layer's queries, attention outputs and feed-forward matter only on that
row. Computing them there alone saves 12d² of that layer's 16d² multiply-adds
per token: about 6% of distilbart-mnli-12-3 (12 encoder and 3 decoder layers),
4% of bart-large-mnli (12 and 12). The logits are unchanged (float32: within
1e-6 of the whole layer's in the tests).

DeBERTa-v2 and v3 read the first token through a pooler: their last layer
computes that row alone the same way, its disentangled attention included (the
row's query against every key, with both relative-position terms taken at the
row's own distances): about 1/12 of a 12-layer model. DeBERTa (v1) runs whole.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    BartForSequenceClassification,
    DebertaV2ForSequenceClassification,
    PreTrainedModel,
)
from transformers.models.bart.modeling_bart import BartDecoderLayer
from transformers.models.deberta_v2.modeling_deberta_v2 import (
    DebertaV2Layer,
    DisentangledSelfAttention,
)

from worker.errors import InferenceError, ModelError
from worker.nli.relative import attend, content_scores, position_keys, position_queries


class PooledRowLayer(nn.Module):
    """A `BartDecoderLayer` that computes its output on one row per sequence.

    `rows` (one position per sequence) is set before each forward pass by the
    hook `pool_last_layer` installs. The returned hidden states equal the
    layer's input everywhere but on those rows, which no later module reads.
    """

    def __init__(self, layer: BartDecoderLayer) -> None:
        super().__init__()
        self.layer = layer
        self.rows: torch.Tensor | None = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        if self.rows is None:
            raise InferenceError("the pooled last layer ran without the rows its head reads")
        layer, rows = self.layer, self.rows
        batch = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        pooled = hidden_states[batch, rows].unsqueeze(1)

        # Self-attention: the row's query against the keys and values of every
        # position up to it, as the causal mask allows.
        residual = pooled
        attended, _ = layer.self_attn(
            pooled,
            key_value_states=hidden_states,
            attention_mask=_row_of_causal_mask(attention_mask, rows, hidden_states.shape[1]),
        )
        pooled = layer.self_attn_layer_norm(residual + attended)

        if encoder_hidden_states is not None:
            residual = pooled
            attended, _ = layer.encoder_attn(
                pooled,
                key_value_states=encoder_hidden_states,
                attention_mask=_row_of_mask(encoder_attention_mask, rows),
            )
            pooled = layer.encoder_attn_layer_norm(residual + attended)

        residual = pooled
        pooled = layer.fc2(layer.activation_fn(layer.fc1(pooled)))
        pooled = layer.final_layer_norm(residual + pooled)
        return hidden_states.index_put((batch, rows), pooled.squeeze(1))


def _row_of_mask(mask: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """Each sequence's query row of a (batch, heads, queries, keys) attention mask."""
    if mask is None or mask.shape[2] == 1:
        return mask
    batch = torch.arange(mask.shape[0], device=mask.device)
    return mask[batch, :, rows].unsqueeze(2)


def _row_of_causal_mask(
    mask: torch.Tensor | None, rows: torch.Tensor, length: int
) -> torch.Tensor | None:
    """The causal mask's row of each sequence's query.

    transformers leaves the mask out when the attention kernel applies
    causality itself (SDPA's `is_causal`), which it does not for one query:
    the row is then built here, in SDPA's boolean form.
    """
    if mask is not None:
        return _row_of_mask(mask, rows)
    positions = torch.arange(length, device=rows.device)
    return (positions[None, :] <= rows[:, None])[:, None, None, :]


class PooledFirstRowLayer(nn.Module):
    """A `DebertaV2Layer` that computes its output on each sequence's first row alone.

    The returned hidden states equal the layer's input everywhere but on the
    first row, which no later module but the pooler reads.
    """

    def __init__(self, layer: DebertaV2Layer) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        query_states: torch.Tensor | None = None,
        relative_pos: torch.Tensor | None = None,
        rel_embeddings: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if query_states is not None or output_attentions:
            raise InferenceError("the pooled last layer computes its first row only")
        layer = self.layer
        first = hidden_states[:, :1]
        context = _first_row_attention(
            layer.attention.self, hidden_states, attention_mask, relative_pos, rel_embeddings
        )
        attended = layer.attention.output(context, first)
        first = layer.output(layer.intermediate(attended), attended)
        return torch.cat((first, hidden_states[:, 1:]), dim=1), None


def _first_row_attention(
    attention: DisentangledSelfAttention,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    relative_pos: torch.Tensor | None,
    rel_embeddings: torch.Tensor | None,
) -> torch.Tensor:
    """The disentangled self-attention's output on the first row of each sequence.

    The same terms as `DisentangledSelfAttention.forward` on that row: content
    to content, content to position (the row's query against the key of each
    key's distance from it) and position to content (each key against the
    query of its distance), under the first row of the (batch, 1, queries,
    keys) mask.
    """
    query, key, value, scale, scores = content_scores(
        attention, hidden_states[:, :1], hidden_states
    )
    if attention.relative_attention:
        if relative_pos is None or rel_embeddings is None:
            raise InferenceError("the pooled last layer ran without relative positions")
        span = attention.pos_ebd_size
        # (queries, keys) distances: the first row's to every key, every key's to it.
        distances = relative_pos.reshape(relative_pos.shape[-2:]).to(torch.long)
        positions = rel_embeddings[: span * 2].unsqueeze(0)
        if "c2p" in attention.pos_att_type:
            by_distance = torch.matmul(query, position_keys(attention, positions))
            index = torch.clamp(distances[0] + span, 0, span * 2 - 1)
            scores = scores + by_distance[..., index] / scale
        if "p2c" in attention.pos_att_type:
            index = torch.clamp(-distances[:, 0] + span, 0, span * 2 - 1)
            # Each key against the position query of its own distance: one product per key.
            by_key = position_queries(attention, positions)[..., index].transpose(-1, -2)
            scores = scores + (key * by_key).sum(-1).unsqueeze(2) / scale
    return attend(scores, attention_mask[:, :, :1], value)


def pool_last_layer(model: PreTrainedModel) -> bool:
    """Make a classifier's last layer compute only the row its head reads.

    Returns whether it applied: False for other architectures, left whole.
    """
    if isinstance(model, DebertaV2ForSequenceClassification):
        return _pool_deberta(model)
    if isinstance(model, BartForSequenceClassification):
        return _pool_bart(model)
    return False


def _pool_deberta(model: DebertaV2ForSequenceClassification) -> bool:
    encoder = model.deberta.encoder
    layers = encoder.layer
    # The first layer's output goes through a convolution across positions
    # (conv_kernel_size), and z_steps re-runs the last layer on all rows.
    if (
        not layers
        or type(layers[-1]) is not DebertaV2Layer
        or (len(layers) == 1 and encoder.conv is not None)
        or model.deberta.z_steps > 1
    ):
        return False
    layers[-1] = PooledFirstRowLayer(layers[-1])
    return True


def _pool_bart(model: BartForSequenceClassification) -> bool:
    layers = model.model.decoder.layers
    if not layers or type(layers[-1]) is not BartDecoderLayer:
        return False
    pooled = PooledRowLayer(layers[-1])
    layers[-1] = pooled
    eos_token_id = model.config.eos_token_id

    def read_rows(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        input_ids = args[0] if args else kwargs.get("input_ids")
        if input_ids is None:
            raise ModelError("the pooled last layer needs input_ids to find the rows it computes")
        # The head reads each sequence's last </s>, as BartForSequenceClassification does.
        last_from_end = input_ids.eq(eos_token_id).flip(1).int().argmax(1)
        pooled.rows = input_ids.shape[1] - 1 - last_from_end

    model.model.register_forward_pre_hook(read_rows, with_kwargs=True)
    return True
