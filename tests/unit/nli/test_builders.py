"""The local model builders and the fortune loader that the other tests rely on."""

from __future__ import annotations

import pytest

from tests.models import (
    BART_SPECIALS,
    CONTRADICTION_NEUTRAL_ENTAILMENT,
    bart_config,
    bart_tokenizer,
)
from tests.texts import fortunes, labelled_fortunes


def test_the_full_bart_config_has_distilbart_mnli_12_3s_shape() -> None:
    config = bart_config(CONTRADICTION_NEUTRAL_ENTAILMENT, size="full")
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (1024, 12, 3)
    assert (config.encoder_attention_heads, config.decoder_attention_heads) == (16, 16)
    assert (config.encoder_ffn_dim, config.decoder_ffn_dim) == (4096, 4096)
    assert (config.vocab_size, config.max_position_embeddings) == (50265, 1024)
    assert config.id2label == CONTRADICTION_NEUTRAL_ENTAILMENT
    assert config.label2id == {"contradiction": 0, "neutral": 1, "entailment": 2}


def test_unknown_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="size"):
        bart_config(CONTRADICTION_NEUTRAL_ENTAILMENT, size="large")


def test_the_bart_tokenizer_has_barts_specials_and_gpt2s_merges() -> None:
    tokenizer = bart_tokenizer()
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(4)] == list(BART_SPECIALS)
    assert tokenizer.mask_token_id == len(tokenizer) - 1
    assert len(tokenizer) <= bart_config(CONTRADICTION_NEUTRAL_ENTAILMENT).vocab_size
    # Byte-level BPE keeps common words whole.
    assert len(tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]) == 2 + 10


def test_fortunes_are_real_varied_and_in_a_fixed_order() -> None:
    first = labelled_fortunes(50)
    assert first == labelled_fortunes(50)
    assert len({f.label for f in first}) > 10
    assert all(f.text and f.text == f.text.strip() for f in first)
    assert all(len(text) <= 100 for text in fortunes(20, max_chars=100))
    assert all(len(text) >= 500 for text in fortunes(5, min_chars=500))


def test_german_fortunes_come_from_fortunes_de() -> None:
    assert {f.label for f in labelled_fortunes(100, lang="de")} >= {"computer", "fussball"}
