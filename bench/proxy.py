"""A small NLI model trained on the CPU, so that low-precision fidelity is measured on
scores that are not near-uniform.

`python -m bench` reports how far bfloat16 and int8 move the scores, but on
random weights every label scores about the same and a tiny change flips the
top label. The proxy is a BART sequence-classification model (encoder-decoder,
eos pooling: distilbart-mnli's family, far smaller) or a DeBERTa-v2 one,
trained from scratch (benchmarks cannot count on reaching the hub) for a few
minutes on bench.entailment's task, built from the fortunes. Its scores are
confident and spread, as a trained model's are. It is built once and cached
under ~/.cache/zsc-worker, keyed by a digest of its recipe.

    python -m bench.proxy --out DIR [--family bart|deberta] [--control]

builds it if needed, then measures bfloat16 and int8 against float32 through
the worker's own classifier (bench.fidelity) and writes proxy.md and
proxy.json; `--control` measures the same model untrained too (untrained.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    BartConfig,
    BartForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from bench import entailment, fidelity
from bench.workload import CACHE_DIR, COMPLETE_FILE
from worker.demo_model import TINY_DEBERTA

# More than the fortunes package holds: every text of a length the recipe takes.
ALL_FORTUNES = 100_000
# What the build records beside the weights (written before them).
TRAINING_FILE = "proxy.json"
# The real MNLI checkpoints' label orders (tests.models has the full list):
# valhalla/distilbart-mnli-12-3 and cross-encoder/nli-deberta-v3-large.
BART_LABELS = {0: "contradiction", 1: "neutral", 2: "entailment"}
DEBERTA_LABELS = {0: "contradiction", 1: "entailment", 2: "neutral"}


# The curriculum: (words either side of each topic word, epochs), None for the
# whole texts. From scratch, a model given whole texts at once stays at chance
# for hundreds of steps: a topic word is a few tokens among seventy. Short
# windows first, then wider ones, teach the same task in a fraction of the time.
CURRICULUM: tuple[tuple[int | None, int], ...] = ((2, 4), (5, 1), (10, 1), (None, 2))
# transformers' default init (0.02) leaves the model in a long plateau (the label
# only counts together with the premise, and every attention map is uniform);
# a wider init lets it learn within the curriculum's few thousand steps.
INIT_STD = 0.08
# Steps between progress lines; the loss shown is their mean.
LOG_EVERY = 200


@dataclass(frozen=True, slots=True)
class Recipe:
    """Everything that shapes the trained weights; its digest names the cache directory."""

    family: str
    shape: dict[str, Any]
    seed: int = 20240601
    # Short fortunes: no pair is truncated at max_length, so every topic word is seen.
    max_chars: int = 300
    max_length: int = 128
    held_out: int = 500
    curriculum: tuple[tuple[int | None, int], ...] = CURRICULUM
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 30
    # Batches are cut from runs of this many length-sorted pairs: less padding.
    bucket_batches: int = 16
    task: dict[str, Any] = field(
        default_factory=lambda: {
            "lexicons": {k: sorted(v) for k, v in entailment.LEXICONS.items()},
            "template": entailment.TEMPLATE,
            "max_topics": entailment.MAX_TOPICS,
        }
    )

    def digest(self) -> str:
        """A short digest of the recipe (task included)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


RECIPES = {
    "bart": Recipe(
        family="bart",
        shape={
            "d_model": 128,
            "encoder_layers": 2,
            "decoder_layers": 1,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 512,
            "decoder_ffn_dim": 512,
            "init_std": INIT_STD,
            # A few minutes of training underfit rather than overfit.
            "dropout": 0.0,
        },
    ),
    "deberta": Recipe(
        family="deberta",
        shape={
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 512,
            "pooler_hidden_size": 128,
            "initializer_range": INIT_STD,
            "hidden_dropout_prob": 0.0,
        },
    ),
}


def proxy_dir(recipe: Recipe) -> Path:
    """Where the proxy of `recipe` is cached."""
    return CACHE_DIR / f"proxy-{recipe.family}-{recipe.digest()}"


def is_built(recipe: Recipe) -> bool:
    """Whether the proxy of `recipe` is in the cache already."""
    return (proxy_dir(recipe) / COMPLETE_FILE).is_file()


def texts(recipe: Recipe) -> tuple[list[str], list[str]]:
    """The recipe's (training, held-out) fortunes."""
    from tests.texts import fortunes

    return entailment.split(
        fortunes(ALL_FORTUNES, max_chars=recipe.max_chars), recipe.held_out, recipe.seed
    )


def untrained(recipe: Recipe) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The recipe's tokenizer and freshly initialised model (seeded)."""
    from tests.models import BART_SPECIALS, BART_VOCAB_SIZE, bart_tokenizer, deberta_tokenizer

    torch.manual_seed(recipe.seed)
    if recipe.family == "bart":
        tokenizer = bart_tokenizer(recipe.max_length)
        bart = BartConfig(
            vocab_size=BART_VOCAB_SIZE,
            max_position_embeddings=recipe.max_length,
            pad_token_id=BART_SPECIALS.index("<pad>"),
            bos_token_id=BART_SPECIALS.index("<s>"),
            eos_token_id=BART_SPECIALS.index("</s>"),
            decoder_start_token_id=BART_SPECIALS.index("</s>"),
            id2label=BART_LABELS,
            label2id={label: i for i, label in BART_LABELS.items()},
            **recipe.shape,
        )
        return tokenizer, BartForSequenceClassification(bart)
    if recipe.family == "deberta":
        tokenizer = deberta_tokenizer(model_max_length=recipe.max_length)
        deberta = DebertaV2Config(
            vocab_size=len(tokenizer),
            type_vocab_size=0,
            pad_token_id=tokenizer.pad_token_id,
            id2label=DEBERTA_LABELS,
            label2id={label: i for i, label in DEBERTA_LABELS.items()},
            # DeBERTa-v3's attention (relative positions only).
            **(TINY_DEBERTA | recipe.shape),
        )
        return tokenizer, DebertaV2ForSequenceClassification(deberta)
    raise ValueError(f"family must be one of {sorted(RECIPES)}, got {recipe.family!r}")


def batches(
    pairs: Sequence[entailment.Example], recipe: Recipe, rng: random.Random
) -> list[list[entailment.Example]]:
    """`pairs` cut into training batches of similar lengths, in a shuffled order."""
    size = recipe.batch_size
    bucket = size * recipe.bucket_batches
    cut: list[list[entailment.Example]] = []
    for start in range(0, len(pairs), bucket):
        run = sorted(pairs[start : start + bucket], key=lambda p: len(p.premise))
        cut += [run[i : i + size] for i in range(0, len(run), size)]
    rng.shuffle(cut)
    return cut


def curriculum(
    recipe: Recipe, training_texts: Sequence[str]
) -> list[list[list[entailment.Example]]]:
    """The training batches, epoch by epoch: windows of the texts, widening, then the texts."""
    rng = random.Random(recipe.seed)
    epochs: list[list[list[entailment.Example]]] = []
    for radius, count in recipe.curriculum:
        stage = training_texts
        if radius is not None:
            stage = sorted({w for text in training_texts for w in entailment.windows(text, radius)})
        for _ in range(count):
            # Each epoch draws its own contradictions, so the model sees more of them.
            pairs = entailment.examples(stage, recipe.seed + len(epochs))
            epochs.append(batches(pairs, recipe, rng))
    return epochs


def train(
    recipe: Recipe,
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    training_texts: Sequence[str],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Train `model` on the task through the curriculum; what it did (steps, time, loss)."""
    label2id = model.config.label2id or {}
    target = {True: label2id["entailment"], False: label2id["contradiction"]}
    epochs = curriculum(recipe, training_texts)
    steps = sum(len(epoch) for epoch in epochs)
    # fused: one kernel for all parameters, several times faster on the CPU.
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, fused=True)
    schedule = get_linear_schedule_with_warmup(optimizer, recipe.warmup_steps, steps)
    model.train()
    started = time.monotonic()
    losses: list[float] = []
    step = 0
    for epoch, epoch_batches in enumerate(epochs):
        for batch in epoch_batches:
            inputs = tokenizer(
                [p.premise for p in batch],
                [p.hypothesis for p in batch],
                padding=True,
                truncation="only_first",
                max_length=recipe.max_length,
                return_tensors="pt",
            )
            labels = torch.tensor([target[p.entailed] for p in batch])
            loss = torch.nn.functional.cross_entropy(model(**inputs).logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
            if step % LOG_EVERY == 0 or step == steps:
                recent = sum(losses[-LOG_EVERY:]) / len(losses[-LOG_EVERY:])
                elapsed = time.monotonic() - started
                where = f"epoch {epoch + 1}/{len(epochs)}, step {step}/{steps}"
                say(f"{where}: loss {recent:.3f}, {elapsed:.0f} s")
    model.eval()
    return {
        "steps": steps,
        "pairs": sum(len(batch) for epoch in epochs for batch in epoch),
        "training_texts": len(training_texts),
        "seconds": round(time.monotonic() - started, 1),
        "threads": torch.get_num_threads(),
        "last_loss": round(sum(losses[-LOG_EVERY:]) / len(losses[-LOG_EVERY:]), 4),
        "recipe": asdict(recipe),
    }


def ensure_proxy(recipe: Recipe, say: Callable[[str], None] = print) -> Path:
    """The proxy of `recipe`: from the cache, else trained now (minutes) and cached.

    Built in a scratch directory and renamed into place, so an interrupted
    build never leaves a directory that looks complete.
    """
    path = proxy_dir(recipe)
    if is_built(recipe):
        return path
    training_texts, _ = texts(recipe)
    tokenizer, model = untrained(recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        # Saved before it is first called (see tests.models.build_bart).
        tokenizer.save_pretrained(scratch)
        say(f"training the {recipe.family} proxy on {len(training_texts)} fortunes")
        log = train(recipe, tokenizer, model, training_texts, say)
        (scratch / TRAINING_FILE).write_text(json.dumps(log, indent=2) + "\n")
        model.save_pretrained(scratch)
        shutil.rmtree(path, ignore_errors=True)
        scratch.rename(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def training_log(path: Path) -> dict[str, Any]:
    """What the build of the proxy in `path` recorded."""
    log: dict[str, Any] = json.loads((path / TRAINING_FILE).read_text())
    return log


def measure(recipe: Recipe, say: Callable[[str], None] = print) -> fidelity.Fidelity:
    """Build the proxy if needed, then bfloat16 and int8 against float32 on its held-out
    texts; with the proxy's training and its held-out accuracy in float32."""
    path = ensure_proxy(recipe, say)
    _, held_out = texts(recipe)
    say(f"measuring the {recipe.family} proxy on {len(held_out)} held-out fortunes")
    name = f"trained {recipe.family} proxy"
    labels = tuple(entailment.LEXICONS)
    measured = fidelity.measure(path, name, held_out, labels, entailment.TEMPLATE)
    log = training_log(path)
    multi, single = (measured.reference[mode] for mode in fidelity.MODES)
    measured.facts = {
        "proxy": f"{path.name}: {recipe.family}, {json.dumps(recipe.shape)}",
        "training": f"{log['steps']} steps of {recipe.batch_size} pairs (windows of "
        f"{log['training_texts']} fortunes, then the fortunes) in {log['seconds']:.0f} s on "
        f"{log['threads']} thread(s); last loss {log['last_loss']:.3f}",
        "held-out accuracy, float32": f"{entailment.decision_accuracy(held_out, multi):.1%} "
        "of text x label decisions (multi-label, score > 0.5); top label one of the text's "
        f"topics: {entailment.top_label_accuracy(held_out, multi):.1%} multi-label, "
        f"{entailment.top_label_accuracy(held_out, single):.1%} single-label",
        **measured.facts,
    }
    return measured


def measure_untrained(recipe: Recipe) -> fidelity.Fidelity:
    """The control: the same measurement on the recipe's model before any training."""
    _, held_out = texts(recipe)
    tokenizer, model = untrained(recipe)
    name = f"untrained {recipe.family} proxy"
    with tempfile.TemporaryDirectory(prefix="proxy-untrained-") as scratch:
        tokenizer.save_pretrained(scratch)
        model.save_pretrained(scratch)
        labels = tuple(entailment.LEXICONS)
        return fidelity.measure(Path(scratch), name, held_out, labels, entailment.TEMPLATE)


def main(argv: list[str] | None = None) -> int:
    """Build the proxy (once), measure its fidelity, print the table and save it."""
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__)
    parser.add_argument("--family", choices=sorted(RECIPES), default="bart")
    parser.add_argument("--out", type=Path, help="write proxy.md and proxy.json here")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's); on a machine busy with other work, "
        "fewer threads than cores can be much faster",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="also measure the same model untrained: near-uniform scores, as random weights give",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    recipe = RECIPES[args.family]
    measured = measure(recipe, lambda line: print(line, flush=True))
    command = " ".join(["python -m bench.proxy", *(argv if argv is not None else sys.argv[1:])])
    markdown = measured.markdown(command)
    print(markdown)
    if args.out:
        measured.save(args.out, "proxy", markdown, training_log(proxy_dir(recipe)))
    if args.control:
        control = measure_untrained(recipe)
        markdown = control.markdown(command)
        print(markdown)
        if args.out:
            control.save(args.out, "untrained", markdown, {"recipe": asdict(recipe)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
