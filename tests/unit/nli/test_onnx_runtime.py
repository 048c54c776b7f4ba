"""float32 and int8 on the CPU: the model exported to ONNX and run by ONNX Runtime.

float32 keeps the pipeline's scores; int8 (CPU only, opt-in, never the default)
moves them a little. The float32 export is cached by a digest of the weights,
int8's quantized copy beside it. int8 runs in ONNX Runtime where the CPU has no
int8 dot product (elsewhere in OpenVINO: test_openvino_runtime), as these tests
make every CPU look.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.texts import fortunes
from worker.errors import ModelError
from worker.nli import classifier as classifier_module
from worker.nli import onnx_runtime
from worker.nli.base import Task
from worker.nli.classifier import NLIClassifier, load_classifier
from worker.nli.forward import TorchForward, model_inputs
from worker.nli.loading import load_model
from worker.nli.onnx_runtime import MODEL_FILE, OnnxForward
from worker.nli.openvino_runtime import OpenVinoForward

TASK = Task(("computers", "food", "love", "science"), "This example is {}.", multi_label=True)
# int8 moves scores (on the tiny models' large random weights, by up to ~0.2);
# these only say they are still the same model's scores.
MIN_CORRELATION = 0.9
MAX_MEAN_DELTA = 0.1
# float32 in ONNX Runtime against float32 in torch: the same arithmetic, fused.
FLOAT32_TOLERANCE = 1e-5
FAMILIES = ["tiny_bart_dir", "tiny_deberta_dir", "tiny_mdeberta_dir"]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of exported models of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return onnx_runtime.cache_root()


@pytest.fixture(autouse=True)
def no_int8_dot_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a CPU without VNNI or AMX: int8 runs in ONNX Runtime."""
    monkeypatch.setattr(classifier_module, "cpu_int8_flags", lambda: ())


def scores(classifier: NLIClassifier, texts: list[str]) -> np.ndarray:
    return np.array(
        [s.scores for s in classifier.classify([classifier.encode(t, TASK) for t in texts])]
    )


def in_torch(model_dir: str) -> NLIClassifier:
    tokenizer, model = load_model(model_dir, torch.device("cpu"), torch.float32)
    return NLIClassifier.of_model(model_dir, tokenizer, model)


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_runs_in_onnx_runtime_with_torchs_scores(
    family: str, request: pytest.FixtureRequest
) -> None:
    model_dir = str(request.getfixturevalue(family))
    # Pairs of different lengths in one batch: a graph that ignored the padding
    # would score the short ones differently.
    texts = fortunes(6, max_chars=400)
    float32 = load_classifier(model_dir, device="cpu", dtype="float32")
    assert isinstance(float32._forward_pass, OnnxForward)
    assert float32.info["precision"] == "float32"
    assert float32.info["runtime"] == "onnxruntime"
    np.testing.assert_allclose(
        scores(float32, texts), scores(in_torch(model_dir), texts), atol=FLOAT32_TOLERANCE
    )


def test_the_export_traces_eager_attention_and_gives_the_model_back_as_it_was(
    tiny_bart_dir: Path, tmp_path: Path
) -> None:
    tokenizer, model = load_model(str(tiny_bart_dir), torch.device("cpu"), torch.float32, "sdpa")
    target = tmp_path / MODEL_FILE
    onnx_runtime.export(model, tokenizer, model_inputs(tokenizer, model), target)
    # SDPA's export guards fully masked rows with IsNaN and Where over every score.
    assert "IsNaN" not in {node.op_type for node in onnx.load(str(target)).graph.node}
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_runs_in_onnx_runtime_and_scores_like_float32(
    family: str, request: pytest.FixtureRequest
) -> None:
    model_dir = str(request.getfixturevalue(family))
    int8 = load_classifier(model_dir, device="cpu", dtype="int8")
    assert isinstance(int8._forward_pass, OnnxForward)
    assert int8.info["runtime"] == "onnxruntime"
    assert_int8_scores_like_float32(int8, model_dir)


def assert_int8_scores_like_float32(int8: NLIClassifier, model_dir: str) -> None:
    """int8's scores are still the model's: near float32's, on pairs of different lengths."""
    assert int8.info["precision"] == "int8"
    texts = fortunes(6, max_chars=400)
    got, expected = scores(int8, texts), scores(in_torch(model_dir), texts)
    assert np.all((got >= 0) & (got <= 1))
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > MIN_CORRELATION
    assert np.abs(got - expected).mean() < MAX_MEAN_DELTA


def test_one_export_serves_float32_and_int8_each_made_once(
    tiny_bart_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=onnx_runtime.__name__):
        first = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
        load_classifier(str(tiny_bart_dir), device="cpu", dtype="float32")
        [export] = cache.glob(f"*/{MODEL_FILE}")
        quantized = export.parent / onnx_runtime.INT8_DIR / MODEL_FILE
        stamps = [export.stat().st_mtime_ns, quantized.stat().st_mtime_ns]
        second = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert [export.stat().st_mtime_ns, quantized.stat().st_mtime_ns] == stamps
    assert [r.message for r in caplog.records].count(
        f"exporting {tiny_bart_dir} to ONNX (once per model and versions)"
    ) == 1
    # MatMul weights in int8: the products run as MatMulInteger.
    operators = {node.op_type for node in onnx.load(str(quantized)).graph.node}
    assert "MatMulInteger" in operators
    texts = fortunes(2, max_chars=200)
    np.testing.assert_array_equal(scores(first, texts), scores(second, texts))
    # Leftovers of an export (a crash half-way) never count as the model.
    assert [p.name for p in cache.iterdir()] == [export.parent.name]
    assert sorted(p.name for p in export.parent.iterdir()) == [
        MODEL_FILE,
        onnx_runtime.INT8_DIR,
    ]


def unused_for_a_month(*entries: Path) -> None:
    month_ago = time.time() - onnx_runtime.CACHE_MAX_IDLE_S - 60
    for entry in entries:
        os.utime(entry, (month_ago, month_ago))


def test_exports_unused_for_30_days_are_pruned_at_each_load(
    tiny_bart_dir: Path, cache: Path
) -> None:
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    stale, recent, half_written = cache / "stale", cache / "recent", cache / ".abc-half"
    for entry in (stale, recent, half_written):
        entry.mkdir()
        (entry / MODEL_FILE).write_bytes(b"graph")
    unused_for_a_month(stale, half_written)

    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")

    assert not stale.exists() and not half_written.exists()
    assert recent.exists()


def test_what_is_derived_from_an_export_goes_once_unused_for_30_days(
    tiny_bart_dir: Path, cache: Path
) -> None:
    """Other recipes' int8 models and other versions' compiled ones, beside an export in
    use: each load marks what it uses, and the rest goes a month after its last use."""
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    [export] = cache.iterdir()
    old_recipe, recent, old_file = export / "onnxruntime-int8-v0", export / "recent", export / "x"
    for entry in (old_recipe, recent):
        entry.mkdir()
    old_file.write_bytes(b"blob")
    in_use = export / onnx_runtime.INT8_DIR
    unused_for_a_month(old_recipe, old_file, in_use, export / MODEL_FILE)

    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")

    assert sorted(p.name for p in export.iterdir()) == [MODEL_FILE, onnx_runtime.INT8_DIR, "recent"]
    assert time.time() - in_use.stat().st_mtime < onnx_runtime.CACHE_MAX_IDLE_S


def test_loading_an_export_marks_it_used(tiny_bart_dir: Path, cache: Path) -> None:
    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    (entry,) = cache.iterdir()
    unused_for_a_month(entry)

    load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")

    assert time.time() - entry.stat().st_mtime < onnx_runtime.CACHE_MAX_IDLE_S


def test_the_digest_follows_the_weights_a_fine_tune_changes(
    tiny_bart_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sampling starts above a thousand elements here, so the tiny model's
    # large matrices are sampled as a real model's are.
    monkeypatch.setattr(onnx_runtime, "DIGEST_WHOLE_ELEMENTS", 1024)
    monkeypatch.setattr(onnx_runtime, "DIGEST_SAMPLED_ELEMENTS", 64)
    _, model = load_model(str(tiny_bart_dir), torch.device("cpu"), torch.float32)
    names = frozenset({"input_ids", "attention_mask"})
    original = onnx_runtime.model_digest(model, names)
    assert onnx_runtime.model_digest(model, names) == original
    assert onnx_runtime.model_digest(model, names | {"token_type_ids"}) != original
    with torch.no_grad():
        head = model.classification_head.out_proj.bias
        head += 1e-3
        assert onnx_runtime.model_digest(model, names) != original
        head -= 1e-3
        matrix = model.model.encoder.layers[0].fc1.weight
        assert matrix.numel() > 1024
        matrix += 1e-3 * torch.randn_like(matrix)
        assert onnx_runtime.model_digest(model, names) != original


def test_a_cache_that_cannot_be_written_exports_into_a_temporary_directory(
    tiny_bart_dir: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A file where the cache's directory should be: even root cannot write there.
    cache.parent.parent.mkdir(parents=True)
    cache.parent.write_text("")
    with caplog.at_level(logging.WARNING, logger=onnx_runtime.__name__):
        int8 = load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")
    assert any("cannot write the ONNX model cache" in r.message for r in caplog.records)
    assert scores(int8, fortunes(1, max_chars=200)).shape == (1, len(TASK.labels))


def test_int8_of_a_model_that_does_not_export_is_a_model_error(
    tiny_bart_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_runtime, "export", fail)
    with pytest.raises(ModelError, match=r"'int8' is not available.*export.*no symbol for"):
        load_classifier(str(tiny_bart_dir), device="cpu", dtype="int8")


def test_float32_of_a_model_that_does_not_export_runs_in_torch(
    tiny_bart_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(onnx_runtime, "export", fail)
    with caplog.at_level(logging.WARNING):
        float32 = load_classifier(str(tiny_bart_dir), device="cpu", dtype="float32")
    assert isinstance(float32._forward_pass, TorchForward)
    [warning] = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert "no symbol for" in warning
    assert "float32 runs in torch instead" in warning


def fail(*_args: object) -> None:
    raise RuntimeError("an operator ONNX has no symbol for")


def test_int8_is_refused_on_a_gpu(tiny_bart_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classifier_module, "resolve_device", lambda _name: torch.device("cuda", 0))
    with pytest.raises(ModelError, match="CPU only"):
        load_classifier(str(tiny_bart_dir), device="cuda", dtype="int8")


def test_auto_never_picks_int8(tiny_bart_dir: Path) -> None:
    auto = load_classifier(str(tiny_bart_dir), device="cpu")
    assert auto.info["precision"] != "int8"


@pytest.mark.parametrize("dtype", ["float32", "int8", "bfloat16"])
def test_the_torch_model_is_let_go_before_the_runtime_reads_its_own_weights(
    tiny_bart_dir: Path, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    """A start-up never holds torch's weights and the runtime's together."""
    loaded: list[weakref.ref[torch.nn.Module]] = []

    def load(*args: object) -> tuple[object, torch.nn.Module]:
        tokenizer, model = load_model(*args)
        loaded.append(weakref.ref(model))
        return tokenizer, model

    def released(runtime: type) -> Callable[..., object]:
        def start(*args: object, **kwargs: object) -> object:
            assert [ref() for ref in loaded] == [None]
            return runtime(*args, **kwargs)

        return start

    monkeypatch.setattr(classifier_module, "load_model", load)
    monkeypatch.setattr(classifier_module, "OnnxForward", released(OnnxForward))
    monkeypatch.setattr(classifier_module, "OpenVinoForward", released(OpenVinoForward))
    classifier = load_classifier(str(tiny_bart_dir), device="cpu", dtype=dtype)
    assert scores(classifier, fortunes(1, max_chars=200)).shape == (1, len(TASK.labels))
