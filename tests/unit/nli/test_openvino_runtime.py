"""bfloat16 on the CPU: the model's float32 ONNX export run by OpenVINO in bfloat16.

Its scores are no further from float32's than transformers' own bfloat16 model's;
where OpenVINO cannot compute in bfloat16 the model runs in torch instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import openvino
import pytest
import torch

from tests.texts import fortunes
from tests.unit.nli import test_onnx_runtime
from tests.unit.nli.test_onnx_runtime import TASK, scores
from worker.nli import openvino_runtime
from worker.nli.classifier import NLIClassifier, load_classifier
from worker.nli.forward import TorchForward
from worker.nli.loading import load_model
from worker.nli.openvino_runtime import OpenVinoForward
from worker.nli.packed import PackedLinear

CPU = torch.device("cpu")
FAMILIES = ["tiny_bart_dir", "tiny_deberta_dir", "tiny_mdeberta_dir"]
# bfloat16 rounding differs from torch's (other kernels, other fusions): the same
# size of error, not the same one.
SAME_SIZE = 1.5
# Where OpenVINO computes bfloat16 on this CPU (AVX512-BF16 or AMX): elsewhere
# load_classifier runs bfloat16 in torch, and the tests say so.
OPENVINO_BF16 = openvino_runtime.BF16_CAPABILITY in openvino.Core().get_property(
    openvino_runtime.CPU, "OPTIMIZATION_CAPABILITIES"
)

# Each test's own cache of exports, autouse, as for ONNX Runtime's tests.
cache = test_onnx_runtime.cache


def in_torch(model_dir: str, dtype: torch.dtype) -> NLIClassifier:
    tokenizer, model = load_model(model_dir, CPU, dtype)
    return NLIClassifier.of_model(model_dir, tokenizer, model)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_runs_in_openvino_no_further_from_float32_than_torchs_bfloat16(
    family: str, request: pytest.FixtureRequest
) -> None:
    model_dir = str(request.getfixturevalue(family))
    # Pairs of different lengths in one batch: padding must not change a score.
    texts = fortunes(6, max_chars=400)
    bfloat16 = load_classifier(model_dir, device="cpu", dtype="bfloat16")
    runtime = OpenVinoForward if OPENVINO_BF16 else TorchForward
    assert isinstance(bfloat16._forward_pass, runtime)
    assert bfloat16.info["precision"] == "bfloat16"
    assert bfloat16.info["runtime"] == ("openvino" if OPENVINO_BF16 else "torch")

    exact = scores(in_torch(model_dir, torch.float32), texts)
    theirs = np.abs(scores(in_torch(model_dir, torch.bfloat16), texts) - exact).max()
    ours = np.abs(scores(bfloat16, texts) - exact).max()
    assert ours <= SAME_SIZE * theirs


def test_bfloat16_and_float32_share_one_export(tiny_bart_dir: Path, cache: Path) -> None:
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="float32")
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="bfloat16")
    assert len(list(cache.iterdir())) == 1


def test_where_openvino_cannot_compute_bfloat16_it_runs_in_torch(
    tiny_bart_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As on a CPU without a bfloat16 multiply: OpenVINO lists no such capability.
    monkeypatch.setattr(openvino_runtime, "BF16_CAPABILITY", "a capability no CPU lists")
    with caplog.at_level(logging.WARNING):
        bfloat16 = load_classifier(str(tiny_bart_dir), device="cpu", dtype="bfloat16")
    assert isinstance(bfloat16._forward_pass, TorchForward)
    assert bfloat16.info["precision"] == "bfloat16"
    assert bfloat16.info["runtime"] == "torch"
    [warning] = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert "OpenVINO (bfloat16)" in warning
    assert "no bfloat16 multiply" in warning
    assert "bfloat16 runs in torch instead" in warning
    # As torch runs bfloat16 on a CPU: its products on packed weights.
    model = bfloat16._forward_pass._model
    assert any(isinstance(module, PackedLinear) for module in model.modules())


@pytest.mark.skipif(not OPENVINO_BF16, reason="OpenVINO computes no bfloat16 on this CPU")
def test_the_compiled_model_is_kept_beside_the_export(tiny_bart_dir: Path, cache: Path) -> None:
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="bfloat16")
    [export] = cache.iterdir()
    compiled = list((export / openvino_runtime.COMPILED_DIR).iterdir())
    assert compiled
    again = load_classifier(str(tiny_bart_dir), device="cpu", dtype="bfloat16")
    assert list((export / openvino_runtime.COMPILED_DIR).iterdir()) == compiled
    assert scores(again, fortunes(1, max_chars=200)).shape == (1, len(TASK.labels))


@pytest.mark.skipif(not OPENVINO_BF16, reason="OpenVINO computes no bfloat16 on this CPU")
def test_a_profiled_forward_counts_its_operators_time_and_caches_nothing(
    tiny_bart_dir: Path,
) -> None:
    """The benchmark's profile (bench.levers --profile): OpenVINO's own counters, on the
    export the worker's classifier runs."""
    running = load_classifier(str(tiny_bart_dir), device="cpu", dtype="bfloat16")._forward_pass
    assert isinstance(running, OpenVinoForward)
    compiled = running.path.parent / openvino_runtime.COMPILED_DIR
    cached = sorted(compiled.iterdir())
    forward = OpenVinoForward(running.path, running.input_names, profile=True)
    tokenizer, model = load_model(str(tiny_bart_dir), CPU, torch.float32)
    profiled = NLIClassifier(str(tiny_bart_dir), tokenizer, model.config, forward)
    scores(profiled, fortunes(2, max_chars=200))
    assert forward.op_seconds["FullyConnected"] > 0
    assert sorted(compiled.iterdir()) == cached
