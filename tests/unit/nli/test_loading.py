"""Device and dtype resolution, and model loading errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from worker.errors import ModelError
from worker.nli import loading
from worker.nli.loading import load_model, resolve_device, resolve_dtype
from worker.nli.precision import cpu_precision

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.usefixtures("no_cuda")
def test_auto_is_the_cpu_without_cuda() -> None:
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU


@pytest.mark.usefixtures("two_gpus")
def test_auto_is_the_first_gpu_with_cuda() -> None:
    assert resolve_device("auto") == CUDA
    assert resolve_device("cuda") == CUDA
    assert resolve_device("CUDA:1") == torch.device("cuda", 1)


@pytest.mark.usefixtures("two_gpus")
def test_a_gpu_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ModelError, match="2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_refused(name: str) -> None:
    with pytest.raises(ModelError, match="CUDA is not available"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", ""])
def test_unknown_devices_are_refused(name: str) -> None:
    with pytest.raises(ModelError, match="expected auto"):
        resolve_device(name)


def test_auto_dtype_on_a_cpu_follows_hardware_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    def bfloat16_three_times_faster(dtype: torch.dtype) -> float:
        return 0.3 if dtype == torch.bfloat16 else 1.0

    monkeypatch.setattr(loading, "cpu_precision", lambda: cpu_precision(flags=()))
    assert resolve_dtype("auto", CPU) == torch.float32
    for flag in ("amx_bf16", "avx512_bf16"):
        monkeypatch.setattr(
            loading,
            "cpu_precision",
            lambda flag=flag: cpu_precision(flags=(flag,), timer=bfloat16_three_times_faster),
        )
        assert resolve_dtype("auto", CPU) == torch.bfloat16


def test_explicit_dtypes_and_gpus_never_probe_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def unexpected() -> None:
        raise AssertionError("the CPU was probed")

    monkeypatch.setattr(loading, "cpu_precision", unexpected)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("float32", CPU) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert resolve_dtype("auto", CUDA) == torch.bfloat16


def test_auto_dtype_on_a_gpu_prefers_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", CUDA) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", CUDA) == torch.float16


@pytest.mark.parametrize(
    ("name", "device", "dtype"),
    [
        ("float32", CPU, torch.float32),
        ("bfloat16", CPU, torch.bfloat16),
        ("float32", CUDA, torch.float32),
        ("float16", CUDA, torch.float16),
        ("bfloat16", CUDA, torch.bfloat16),
    ],
)
def test_explicit_dtypes_are_honoured(name: str, device: torch.device, dtype: torch.dtype) -> None:
    assert resolve_dtype(name, device) == dtype


def test_float16_on_the_cpu_is_refused_with_the_reason() -> None:
    with pytest.raises(ModelError, match="not supported on the CPU"):
        resolve_dtype("float16", CPU)


def test_unknown_dtypes_are_refused() -> None:
    with pytest.raises(ModelError, match="expected auto"):
        resolve_dtype("int8", CPU)


def test_a_local_model_loads_in_eval_mode_on_device_and_dtype(tiny_bart_dir: Path) -> None:
    loaded = load_model(str(tiny_bart_dir), CPU, torch.bfloat16)
    assert not loaded.model.training
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.model.device == CPU
    assert loaded.model.config._attn_implementation == "sdpa"
    assert loaded.tokenizer.model_max_length == 1024


def test_models_without_sdpa_fall_back_to_eager(tiny_deberta_dir: Path) -> None:
    loaded = load_model(str(tiny_deberta_dir), CPU, torch.float32)
    assert loaded.model.config._attn_implementation == "eager"


def test_an_unreachable_hub_says_to_pass_a_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline mode fails at once the way an unreachable hub fails after retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match=r"hub cannot be reached.*--model PATH"):
        load_model("valhalla/distilbart-mnli-12-3", CPU, torch.float32)


@pytest.mark.parametrize("name", ["/nonexistent/model", "./nonexistent", "a/b/c"])
def test_a_missing_directory_is_named(name: str) -> None:
    with pytest.raises(ModelError, match="no such directory"):
        load_model(name, CPU, torch.float32)


def test_a_directory_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_model(str(tmp_path), CPU, torch.float32)


def test_a_model_directory_without_weights_is_refused(tmp_path: Path, tiny_bart_dir: Path) -> None:
    (tmp_path / "config.json").write_bytes((tiny_bart_dir / "config.json").read_bytes())
    with pytest.raises(ModelError, match="cannot load model") as refused:
        load_model(str(tmp_path), CPU, torch.float32)
    assert refused.value.__cause__ is None


def test_a_model_directory_without_a_tokenizer_is_refused(
    tmp_path: Path, tiny_bart_dir: Path
) -> None:
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_bart_dir / name).read_bytes())
    with pytest.raises(ModelError, match="no tokenizer files"):
        load_model(str(tmp_path), CPU, torch.float32)
