"""The int8 opt-in: dynamic quantization of the Linear layers, CPU only, never the default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from tests.texts import fortunes
from worker.errors import ModelError
from worker.nli import classifier as classifier_module
from worker.nli.base import Task
from worker.nli.classifier import load_classifier

TASK = Task(("computers", "food", "love", "science"), "This example is {}.", multi_label=True)
# int8 moves scores (on the tiny model's large random weights, by up to ~0.2);
# these only say they are still the same model's scores.
MIN_CORRELATION = 0.9
MAX_MEAN_DELTA = 0.1


def test_int8_quantizes_the_linear_layers_and_scores_like_float32(tiny_bart_dir: Path) -> None:
    texts = fortunes(4, max_chars=400)
    int8 = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    float32 = load_classifier(str(tiny_bart_dir), device="cpu", dtype="float32")
    layers = [type(m) for m in int8._model.modules()]
    assert DynamicLinear in layers
    assert torch.nn.Linear not in layers
    assert int8.info["precision"] == "int8"
    assert float32.info["precision"] == "float32"
    got = np.array([s.scores for s in int8.classify([int8.encode(t, TASK) for t in texts])])
    expected = np.array(
        [s.scores for s in float32.classify([float32.encode(t, TASK) for t in texts])]
    )
    assert np.all((got >= 0) & (got <= 1))
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > MIN_CORRELATION
    assert np.abs(got - expected).mean() < MAX_MEAN_DELTA


def test_int8_is_refused_on_a_gpu(tiny_bart_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classifier_module, "resolve_device", lambda _name: torch.device("cuda", 0))
    with pytest.raises(ModelError, match="CPU only"):
        load_classifier(str(tiny_bart_dir), device="cuda", dtype="int8")


def test_auto_never_picks_int8(tiny_bart_dir: Path) -> None:
    auto = load_classifier(str(tiny_bart_dir), device="cpu")
    assert all(type(m) is not DynamicLinear for m in auto._model.modules())
