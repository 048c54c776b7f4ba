"""The workload every benchmark runs: real texts, the labels, and a full-size model.

The texts are Debian's fortunes (real English of varied length); the model has
valhalla/distilbart-mnli-12-3's exact shape with random weights, built once
into a cache directory because the hub may be out of reach.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The workload: 32 English fortunes against 8 labels, multi-label.
TEXTS = 32
# `--quick`: a stride sample of the same 32, so lengths stay representative.
QUICK_TEXTS = 4
# Fortunes that come after the measured ones: warm-up only, never timed. One
# text's pairs already take every kernel through its first (slow) call.
WARMUP_TEXTS = 2
# Real labels: names of fortune files (DESIGN.md's topics).
LABELS = ("computers", "science", "politics", "food", "sports", "love", "medicine", "law")
TEMPLATE = "This example is {}."
MULTI_LABEL = True

MODEL_DIR_ENV = "ZSC_BENCH_MODEL"
# Built models are kept beside the demo's and the Kafka jars (outside the repo).
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zsc-worker"
# Written last by `ensure_model`: a directory without it is half-built.
COMPLETE_FILE = "model.safetensors"


@dataclass(frozen=True, slots=True)
class Workload:
    """Texts to time, texts to warm up on, and what they are classified against."""

    texts: tuple[str, ...]
    warmup: tuple[str, ...]
    source: str
    """Where the texts come from, in words."""
    labels: tuple[str, ...] = LABELS
    template: str = TEMPLATE
    multi_label: bool = MULTI_LABEL

    @property
    def pairs(self) -> int:
        """Premise/hypothesis pairs of one pass over the texts."""
        return len(self.texts) * len(self.labels)

    def hypotheses(self) -> list[str]:
        """One hypothesis per label, in label order."""
        return [self.template.format(label) for label in self.labels]


def stride_sample(items: Sequence[str], count: int) -> tuple[str, ...]:
    """`count` items spread evenly over `items` (every k-th), keeping their order."""
    if count >= len(items):
        return tuple(items)
    step = len(items) // count
    return tuple(items[::step][:count])


def fortune_workload(count: int = TEXTS, sample: int | None = None) -> Workload:
    """The first `count` English fortunes (or a stride sample of them) and warm-up texts."""
    from tests.texts import FORTUNES_DIR, fortunes

    if not FORTUNES_DIR.is_dir():
        raise SystemExit(
            "the benchmarks need Debian's fortunes (real texts): "
            "`make fortunes` or `apt-get install fortunes`"
        )
    every = fortunes(count + WARMUP_TEXTS)
    texts = every[:count]
    return Workload(
        texts=stride_sample(texts, sample) if sample else tuple(texts),
        warmup=tuple(every[count:]),
        source="English fortunes",
    )


def default_model_dir(size: str) -> Path:
    """Where the random-weight model of `size` is cached (`$ZSC_BENCH_MODEL` overrides)."""
    override = os.environ.get(MODEL_DIR_ENV)
    return Path(override) if override else CACHE_DIR / f"bench-bart-{size}"


def file_workload(
    path: Path,
    labels: Sequence[str] = LABELS,
    template: str = TEMPLATE,
    multi_label: bool = MULTI_LABEL,
    sample: int | None = None,
) -> Workload:
    """Your own texts: JSON lines with a "text" field, or one text per line.

    The last WARMUP_TEXTS of the file warm up; the others are timed.
    """
    import orjson

    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                line = orjson.loads(line)["text"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise SystemExit(
                    f"{path}:{number}: a JSON line needs a string 'text' field"
                ) from None
        if not isinstance(line, str):
            raise SystemExit(f"{path}:{number}: a JSON line needs a string 'text' field")
        texts.append(line)
    if len(texts) <= WARMUP_TEXTS:
        raise SystemExit(f"{path}: give more than {WARMUP_TEXTS} texts ({len(texts)} found)")
    timed = texts[:-WARMUP_TEXTS]
    return Workload(
        texts=stride_sample(timed, sample) if sample else tuple(timed),
        warmup=tuple(texts[-WARMUP_TEXTS:]),
        source=str(path),
        labels=tuple(labels),
        template=template,
        multi_label=multi_label,
    )


def ensure_model(path: Path, size: str = "full") -> Path:
    """Build the BART NLI model of `size` into `path` unless it is there already.

    Built in a scratch directory and renamed into place, so an interrupted build
    never leaves a directory that looks complete.
    """
    if (path / COMPLETE_FILE).is_file():
        return path
    from tests.models import build_bart

    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        build_bart(scratch, size=size)
        shutil.rmtree(path, ignore_errors=True)
        scratch.rename(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path
