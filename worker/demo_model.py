"""A small NLI model with random weights, for the demo where the hub cannot be reached.

The pipeline then still runs end to end on real loading code (a config with an
NLI label order, safetensors weights, a tokenizer trained on the demo's own
texts), but its scores mean nothing. Only `transformers`, `sentencepiece` and
`torch` are needed: the worker's own dependencies.

    python -m worker.demo_model --out DIR
"""

from __future__ import annotations

import argparse
import io
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Tokenizer

SEED = 20240601
DEBERTA_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
SENTENCEPIECE_SPECIALS = ("<unk>", "<s>", "</s>")
WHITESPACE = re.compile(r"\s{2,}|[\n\r\t]")
DEBERTA_MAX_LENGTH = 512  # DeBERTa-v3's model_max_length
# The demo's texts are a few hundred words: a vocabulary this small still keeps
# most of them whole.
DEMO_VOCAB_SIZE = 400
# cross-encoder/nli-deberta-v3-large's label order.
DEMO_LABELS = {0: "contradiction", 1: "entailment", 2: "neutral"}
TINY_DEBERTA: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "pooler_hidden_size": 32,
    # DeBERTa-v3: relative positions only, no absolute position input, no token types.
    "max_position_embeddings": DEBERTA_MAX_LENGTH,
    "relative_attention": True,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False,
    # transformers' default (0.02) leaves attention near-uniform and every label at the
    # same score; this spread makes the scores differ (they still mean nothing).
    "initializer_range": 0.3,
}


def train_unigram(texts: Iterable[str], vocab_size: int) -> list[tuple[str, float]]:
    """A DeBERTa-v3-like Unigram vocabulary (pieces and scores) trained on `texts`.

    SentencePiece trains it, as DeBERTa-v3's own was: the same texts give the same
    vocabulary in every process, which `tokenizers`' Unigram trainer does not (its word
    counts are summed in a hash map's per-process order), and tests built on these
    models compare logits against bounds.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=(_normalized(text) for text in texts),
        model_writer=model,
        model_type="unigram",
        # SentencePiece's own <unk>, <s> and </s> give way to DeBERTa's specials.
        vocab_size=vocab_size - len(DEBERTA_SPECIALS) + len(SENTENCEPIECE_SPECIALS),
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    trained = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [(trained.id_to_piece(i), trained.get_score(i)) for i in range(len(trained))]
    return [(special, 0.0) for special in DEBERTA_SPECIALS] + pieces[len(SENTENCEPIECE_SPECIALS) :]


def _normalized(text: str) -> str:
    """DebertaV2Tokenizer's normalizer: whitespace runs and line breaks to one space, NFC,
    no trailing space."""
    return unicodedata.normalize("NFC", WHITESPACE.sub(" ", text)).rstrip()


def build_demo_model(path: Path, texts: Iterable[str]) -> Path:
    """Write a tiny DeBERTa-v2 NLI model with random weights, its tokenizer trained on
    `texts`, to `path`."""
    tokenizer = DebertaV2Tokenizer(
        vocab=train_unigram(texts, DEMO_VOCAB_SIZE), model_max_length=DEBERTA_MAX_LENGTH
    )
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        type_vocab_size=0,
        pad_token_id=tokenizer.pad_token_id,
        id2label=DEMO_LABELS,
        label2id={label: i for i, label in DEMO_LABELS.items()},
        **TINY_DEBERTA,
    )
    torch.manual_seed(SEED)
    model = DebertaV2ForSequenceClassification(config).eval()
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Write the demo's fallback model to `--out`."""
    from worker.demo import demo_texts

    parser = argparse.ArgumentParser(prog="python -m worker.demo_model", description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="directory to write")
    args = parser.parse_args(argv)
    print(build_demo_model(args.out, demo_texts()))


if __name__ == "__main__":
    main()
