"""bfloat16 and int8 on the CPU: the model's float32 ONNX export run by OpenVINO.

Its bfloat16 scores are no further from float32's than transformers' own
bfloat16 model's; where OpenVINO cannot compute in bfloat16 the model runs in
torch instead. int8 runs here where the CPU has an int8 dot product, quantized
statically on the worker's calibration batches, and scores like float32.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import nncf
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
    compiled = sorted((export / openvino_runtime.FUSED_DIR).rglob("*"))
    assert compiled
    again = load_classifier(str(tiny_bart_dir), device="cpu", dtype="bfloat16")
    assert sorted((export / openvino_runtime.FUSED_DIR).rglob("*")) == compiled
    assert scores(again, fortunes(1, max_chars=200)).shape == (1, len(TASK.labels))


@pytest.mark.skipif(not OPENVINO_BF16, reason="OpenVINO computes no bfloat16 on this CPU")
def test_a_profiled_forward_counts_its_operators_time_and_caches_nothing(
    tiny_bart_dir: Path,
) -> None:
    """The benchmark's profile (bench.levers --profile): OpenVINO's own counters, on the
    export the worker's classifier runs."""
    running = load_classifier(str(tiny_bart_dir), device="cpu", dtype="bfloat16")._forward_pass
    assert isinstance(running, OpenVinoForward)
    compiled = running.path.parent / openvino_runtime.FUSED_DIR
    cached = sorted(compiled.rglob("*"))
    forward = running.recompiled(profile=True)
    tokenizer, model = load_model(str(tiny_bart_dir), CPU, torch.float32)
    profiled = NLIClassifier(str(tiny_bart_dir), tokenizer, model.config, forward)
    scores(profiled, fortunes(2, max_chars=200))
    assert forward.op_seconds["FullyConnected"] > 0
    assert sorted(compiled.rglob("*")) == cached


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
def test_int8_is_quantized_once_on_its_calibration_and_kept_beside_the_export(
    tiny_bart_dir: Path,
    cache: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    with caplog.at_level(logging.INFO, logger=openvino_runtime.__name__):
        load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
        [model_file] = cache.glob(f"*/{openvino_runtime.INT8_DIR}-*/{openvino_runtime.INT8_MODEL}")
        stamp = model_file.stat().st_mtime_ns
        again = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert model_file.stat().st_mtime_ns == stamp
    quantizing = [r.message for r in caplog.records if r.message.startswith("quantizing")]
    assert len(quantizing) == 1
    # NNCF's progress bars stay off stdout, where `zsc-worker classify` prints results.
    assert capfd.readouterr().out == ""
    assert scores(again, fortunes(1, max_chars=200)).shape == (1, len(TASK.labels))

    quantized = openvino.Core().read_model(model_file)
    products = {
        node.get_friendly_name(): [node.input_value(i).get_node() for i in (0, 1)]
        for node in quantized.get_ordered_ops()
        if node.get_type_name() == "MatMul"
    }
    static = {
        name for name, (data, _) in products.items() if data.get_type_name() == "FakeQuantize"
    }
    # The products of weights that hold most of the FLOPs (the projections and the
    # feed-forwards) take their input through fixed scales; attention's products of two
    # activations stay as they were.
    weighted = [name for name in products if re.search(r"/(fc1|fc2|[qkv]_proj)/MatMul$", name)]
    assert len(weighted) == 5 * attention_layers(tiny_bart_dir) - 2 * decoder_layers(tiny_bart_dir)
    assert set(weighted) <= static
    two_activations = [
        name for name, (_, other) in products.items() if other.get_type_name() == "Transpose"
    ]
    assert len(two_activations) == 2 * attention_layers(tiny_bart_dir)
    assert not static & set(two_activations)
    # The scores' products transpose the keys themselves (`_keys_split_like_queries`).
    scores_products = [
        node
        for node in quantized.get_ordered_ops()
        if node.get_friendly_name() in two_activations and node.get_attributes()["transpose_b"]
    ]
    assert len(scores_products) == attention_layers(tiny_bart_dir)


@pytest.mark.usefixtures("int8_dot_product")
def test_compiled_models_are_kept_per_cpu_and_go_once_unused_for_30_days(
    tiny_bart_dir: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    [export] = cache.iterdir()
    compiled = export / openvino_runtime.FUSED_DIR
    [in_use] = compiled.iterdir()
    [int8] = export.glob(f"{openvino_runtime.INT8_DIR}-*")
    # An earlier layout's compiled model, another OpenVINO's, an earlier int8 recipe's.
    old_layout, other_version = compiled / "123.blob", compiled / "0123456789abcdef"
    old_recipe = export / "openvino-int8-static-v1-0123456789abcdef"
    old_layout.write_bytes(b"blob")
    other_version.mkdir()
    old_recipe.mkdir()
    test_onnx_runtime.unused_for_a_month(old_layout, other_version, old_recipe, in_use, int8)

    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert list(compiled.iterdir()) == [in_use]
    assert time.time() - in_use.stat().st_mtime < onnx_runtime.CACHE_MAX_IDLE_S
    assert not old_recipe.exists() and int8.exists()

    # Another CPU sharing the cache compiles for itself, beside it.
    monkeypatch.setattr(openvino_runtime, "cpu_flags", lambda wanted: ("amx_int8",))
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert len(list(compiled.iterdir())) == 2
    assert all(list(key.iterdir()) for key in compiled.iterdir())


def test_attentions_keys_split_like_its_queries_give_the_same_logits(tiny_bart_dir: Path) -> None:
    """The rewrite int8 is quantized after (`_keys_split_like_queries`) changes no number."""
    export = load_classifier(str(tiny_bart_dir), device="cpu", dtype="float32")._forward_pass
    assert isinstance(export, OnnxForward)
    core = openvino.Core()
    model = core.read_model(export.path)
    assert openvino_runtime._keys_split_like_queries(model) == attention_layers(tiny_bart_dir)
    assert openvino_runtime._keys_split_like_queries(model) == 0
    tokenizer, _ = load_model(str(tiny_bart_dir), CPU, torch.float32)
    premises = fortunes(3, max_chars=200)
    arrays = dict(
        tokenizer(
            premises,
            [f"This example is {label}." for label in TASK.labels[:3]],
            padding=True,
            return_tensors="np",
        )
    )
    config = {"INFERENCE_PRECISION_HINT": openvino.Type.f32}
    [before, after] = [
        core.compile_model(source, openvino_runtime.CPU, config)
        .create_infer_request()
        .infer(arrays)
        for source in (export.path, model)
    ]
    np.testing.assert_array_equal(before[0], after[0])


def fused_kernels(forward: OpenVinoForward) -> int:
    """How many of OpenVINO's generated kernels ("snippets") the compiled model runs."""
    runtime_model = forward._request.get_compiled_model().get_runtime_model()
    return sum(
        1
        for node in runtime_model.get_ordered_ops()
        if node.get_rt_info()["layerType"] == "Subgraph"
    )


@pytest.mark.usefixtures("int8_dot_product")
def test_attention_runs_in_openvinos_fused_kernels(tiny_bart_dir: Path, cache: Path) -> None:
    int8 = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")._forward_pass
    assert isinstance(int8, OpenVinoForward)
    assert fused_kernels(int8) >= attention_layers(tiny_bart_dir)
    # As the benchmark's levers compare it: the same model without them.
    unfused = int8.recompiled(fused_kernels=False)
    assert fused_kernels(unfused) == 0
    # Each kept apart: OpenVINO's cache would hand back the one compiled first.
    [export] = cache.iterdir()
    assert list((export / openvino_runtime.FUSED_DIR).iterdir())
    assert list((export / openvino_runtime.UNFUSED_DIR).iterdir())


@pytest.mark.usefixtures("int8_dot_product")
def test_where_openvino_cannot_generate_its_fused_kernels_it_compiles_without_them(
    tiny_bart_dir: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    compile_model = openvino.Core.compile_model
    fused_tries: list[Path] = []

    def without_registers(
        core: openvino.Core, model: object, *args: object, **kwargs: object
    ) -> openvino.CompiledModel:
        # As OpenVINO's code generator fails on DeBERTa's attention; NNCF's own
        # compilations (of a model in memory, not a file) are left alone.
        config = kwargs.get("config", args[1] if len(args) > 1 else {})
        wanted = isinstance(config, dict) and config.get(openvino_runtime.SNIPPETS_MODE)
        if isinstance(model, Path) and wanted != openvino_runtime.SNIPPETS_OFF:
            fused_tries.append(model)
            raise RuntimeError("Can't allocate registers for a snippet: not enough registers")
        return compile_model(core, model, *args, **kwargs)

    monkeypatch.setattr(openvino.Core, "compile_model", without_registers)
    with caplog.at_level(logging.INFO, logger=openvino_runtime.__name__):
        int8 = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert isinstance(int8._forward_pass, OpenVinoForward)
    assert fused_kernels(int8._forward_pass) == 0
    [export] = cache.iterdir()
    assert list((export / openvino_runtime.UNFUSED_DIR).iterdir())
    [refused] = (export / openvino_runtime.FUSED_DIR).iterdir()
    assert refused.name.startswith(openvino_runtime.REFUSED_PREFIX)
    [without] = [r.message for r in caplog.records if "without them" in r.message]
    assert "cannot generate its fused kernels" in without
    assert "not enough registers" in without
    assert_int8_scores_like_float32(int8, str(tiny_bart_dir))

    # A restart compiles without them at once, saying why.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=openvino_runtime.__name__):
        again = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert len(fused_tries) == 1
    assert fused_kernels(again._forward_pass) == 0
    [before] = [r.message for r in caplog.records if "fused kernels" in r.message]
    assert "could not generate for it before (" in before
    assert "not enough registers" in before
    assert f"removing {refused} tries again" in before

    # A month after it was written, the note goes and a start-up tries again.
    test_onnx_runtime.unused_for_a_month(refused / openvino_runtime.REASON_FILE)
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert len(fused_tries) == 2
    # Noted again, for another month.
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert len(fused_tries) == 2

    # Another CPU sharing the cache tries for itself.
    monkeypatch.setattr(openvino_runtime, "cpu_flags", lambda wanted: ("amx_int8",))
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert len(fused_tries) == 3


def decoder_layers(model_dir: Path) -> int:
    _, model = load_model(str(model_dir), CPU, torch.float32)
    return int(model.config.decoder_layers)


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
def test_where_nncf_cannot_quantize_the_model_int8_runs_in_onnx_runtime(
    tiny_bart_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unsupported(*_args: object, **_kwargs: object) -> None:
        raise nncf.errors.UnsupportedModelError("no quantizer for this model")

    monkeypatch.setattr(nncf, "quantize", unsupported)
    with caplog.at_level(logging.WARNING):
        int8 = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert isinstance(int8._forward_pass, OnnxForward)
    [warning] = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        "OpenVINO (int8): RuntimeError: NNCF cannot quantize it: "
        "UnsupportedModelError: no quantizer for this model"
    ) in warning
    assert warning.endswith("int8 runs in ONNX Runtime instead")


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
