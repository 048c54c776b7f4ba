"""bfloat16 and int8 on the CPU: the model's float32 ONNX export run by OpenVINO.

Its bfloat16 scores are no further from float32's than transformers' own
bfloat16 model's; where OpenVINO cannot compute in bfloat16 the model runs in
torch instead. int8 runs here where the CPU has an int8 dot product, its
weights rounded per output channel, and scores like float32.
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
from tests.unit.nli.test_onnx_runtime import (
    TASK,
    assert_int8_scores_like_float32,
    fail,
    scores,
)
from worker.errors import ModelError
from worker.nli import classifier as classifier_module
from worker.nli import onnx_runtime, openvino_runtime
from worker.nli.classifier import NLIClassifier, load_classifier
from worker.nli.forward import TorchForward
from worker.nli.loading import load_model
from worker.nli.onnx_runtime import OnnxForward
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


@pytest.fixture
def int8_dot_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a CPU with AVX512-VNNI (OpenVINO runs the same int8 graph on any x86 CPU,
    only slower without one)."""
    monkeypatch.setattr(classifier_module, "cpu_int8_flags", lambda: ("avx512_vnni",))


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


@pytest.mark.usefixtures("int8_dot_product")
@pytest.mark.parametrize("family", FAMILIES)
def test_int8_runs_in_openvino_and_scores_like_float32(
    family: str, request: pytest.FixtureRequest
) -> None:
    model_dir = str(request.getfixturevalue(family))
    int8 = load_classifier(model_dir, device="cpu", dtype="int8")
    assert isinstance(int8._forward_pass, OpenVinoForward)
    assert int8.info["runtime"] == "openvino"
    assert_int8_scores_like_float32(int8, model_dir)


@pytest.mark.usefixtures("int8_dot_product")
def test_int8_rounds_the_float32_exports_products_once_and_keeps_them_beside_it(
    tiny_bart_dir: Path, cache: Path
) -> None:
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="float32")
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    [export] = cache.iterdir()
    model_file = export / openvino_runtime.INT8_DIR / openvino_runtime.INT8_MODEL
    stamp = model_file.stat().st_mtime_ns
    again = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert model_file.stat().st_mtime_ns == stamp
    assert scores(again, fortunes(1, max_chars=200)).shape == (1, len(TASK.labels))

    rounded = openvino.Core().read_model(model_file)
    int8_weights = [
        node
        for node in rounded.get_ordered_ops()
        if node.get_type_name() == "Constant" and node.get_element_type() == openvino.Type.i8
    ]
    products = [n for n in rounded.get_ordered_ops() if n.get_type_name() == "MatMul"]
    # Every product of weights (projections, feed-forwards, the head); attention's two
    # multiply activations.
    assert len(int8_weights) == len(products) - 2 * attention_layers(tiny_bart_dir)
    # Groups as wide as the model: the feed-forward's inner dimension is a multiple.
    _, model = load_model(str(tiny_bart_dir), CPU, torch.float32)
    assert rounded.get_rt_info(openvino_runtime.GROUP_SIZE_KEY).astype(int) == model.config.d_model


def attention_layers(model_dir: Path) -> int:
    """Attention blocks of a BART: self-attention in every layer, cross-attention in the
    decoder's."""
    _, model = load_model(str(model_dir), CPU, torch.float32)
    config = model.config
    return config.encoder_layers + 2 * config.decoder_layers


def test_where_the_cpu_has_no_int8_dot_product_int8_runs_in_onnx_runtime(
    tiny_bart_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(classifier_module, "cpu_int8_flags", lambda: ())
    int8 = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert isinstance(int8._forward_pass, OnnxForward)
    assert int8.info["runtime"] == "onnxruntime"


@pytest.mark.usefixtures("int8_dot_product")
def test_where_openvino_cannot_run_int8_it_runs_in_onnx_runtime(
    tiny_bart_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(openvino_runtime, "int8_model", fail)
    with caplog.at_level(logging.WARNING):
        int8 = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert isinstance(int8._forward_pass, OnnxForward)
    assert int8.info["precision"] == "int8"
    [warning] = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert "OpenVINO (int8): RuntimeError: an operator ONNX has no symbol for" in warning
    assert warning.endswith("int8 runs in ONNX Runtime instead")
    assert_int8_scores_like_float32(int8, str(tiny_bart_dir))


@pytest.mark.usefixtures("int8_dot_product")
def test_where_no_runtime_runs_int8_it_is_a_model_error(
    tiny_bart_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openvino_runtime, "int8_model", fail)
    monkeypatch.setattr(onnx_runtime, "int8_model", fail)
    with pytest.raises(ModelError, match=r"'int8' is not available.* ONNX Runtime \(int8\)"):
        load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")


@pytest.mark.parametrize(
    ("runtime", "precision"), [(OpenVinoForward, "float16"), (OnnxForward, "bfloat16")]
)
def test_each_runtime_refuses_a_precision_it_does_not_run(
    tiny_bart_dir: Path, runtime: type, precision: str
) -> None:
    with pytest.raises(ValueError, match=f"not {precision!r}"):
        runtime(tiny_bart_dir / "model.onnx", frozenset(), precision)
