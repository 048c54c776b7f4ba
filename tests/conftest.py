"""Session fixtures shared by all tests: locally built NLI model directories."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from tests.models import (
    CONTRADICTION_ENTAILMENT_NEUTRAL,
    CONTRADICTION_NEUTRAL_ENTAILMENT,
    ENTAILMENT_NEUTRAL_CONTRADICTION,
    build_bart,
    build_deberta,
)

TinyModelFactory = Callable[..., Path]

BUILDERS: dict[str, Callable[..., Path]] = {"bart": build_bart, "deberta": build_deberta}


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFactory:
    """Build a tiny model directory once per session and per set of arguments.

    Call it as `tiny_model_factory(family, id2label, **options)`, family being
    "bart" or "deberta" and options those of `build_bart` / `build_deberta`.
    """
    built: dict[tuple[object, ...], Path] = {}

    def build(family: str, id2label: Mapping[int, str], **options: object) -> Path:
        key = (family, tuple(sorted(id2label.items())), tuple(sorted(options.items())))
        if key not in built:
            path = tmp_path_factory.mktemp(f"tiny-{family}")
            built[key] = BUILDERS[family](path, id2label, **options)
        return built[key]

    return build


@pytest.fixture(scope="session")
def tiny_bart_dir(tiny_model_factory: TinyModelFactory) -> Path:
    """A tiny BART NLI model with distilbart-mnli-12-3's label order."""
    return tiny_model_factory("bart", CONTRADICTION_NEUTRAL_ENTAILMENT)


@pytest.fixture(scope="session")
def tiny_deberta_dir(tiny_model_factory: TinyModelFactory) -> Path:
    """A tiny DeBERTa-v3-style NLI model with cross-encoder/nli-deberta-v3-large's label order."""
    return tiny_model_factory("deberta", CONTRADICTION_ENTAILMENT_NEUTRAL)


@pytest.fixture(scope="session")
def tiny_mdeberta_dir(tiny_model_factory: TinyModelFactory) -> Path:
    """A tiny multilingual DeBERTa NLI model with mDeBERTa-v3-base-mnli-xnli's label order."""
    return tiny_model_factory("deberta", ENTAILMENT_NEUTRAL_CONTRADICTION, multilingual=True)
