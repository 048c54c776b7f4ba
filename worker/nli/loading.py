"""Pick the device and dtype, and load an NLI model and its tokenizer.

This is where transformers' and the hub's errors become `ModelError`s with a
message that says what to do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import torch
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
from transformers import (
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from worker.errors import ModelError
from worker.nli.precision import cpu_precision

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
_CUDA_DEVICE = re.compile(r"cuda(?::(\d+))?")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_CHOICES = "auto | " + " | ".join(DTYPES)
# What every saved transformers model directory has.
CONFIG_FILE = "config.json"


class LoadedModel(NamedTuple):
    """A tokenizer and its sequence-classification model, in eval mode on its device."""

    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel


def resolve_device(name: str) -> torch.device:
    """Turn `auto | cpu | cuda | cuda:N` into a device this machine has.

    `auto` is the first CUDA device when there is one, else the CPU.
    """
    choice = name.strip().lower()
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return torch.device("cpu")
    match = _CUDA_DEVICE.fullmatch(choice)
    if match is None:
        raise ModelError(f"unknown device {name!r}: expected {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ModelError(
            f"device {name!r} was asked for but CUDA is not available here "
            "(no GPU, no driver, or a CPU-only torch); use 'cpu' or 'auto'"
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ModelError(
            f"device {name!r} does not exist: this machine has "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Turn `auto | float32 | bfloat16 | float16` into the dtype to load the weights in.

    `auto` takes the fastest precision the device runs well: bfloat16 on GPUs that
    support it, else float16 on GPUs; on a CPU, bfloat16 where it multiplies
    bfloat16 in hardware and a start-up probe finds that faster, else float32
    (see `precision.cpu_precision`).
    """
    choice = name.strip().lower()
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cpu_precision().dtype
    dtype = DTYPES.get(choice)
    if dtype is None:
        raise ModelError(f"unknown dtype {name!r}: expected {DTYPE_CHOICES}")
    if dtype == torch.float16 and device.type == "cpu":
        raise ModelError(
            "dtype 'float16' is not supported on the CPU: CPUs have no fast float16 "
            "matmul and some of torch's CPU kernels lack it; use 'float32' or "
            "'bfloat16' (fast on CPUs with AMX or AVX512-BF16), or 'auto'"
        )
    return dtype


def _is_local(name: str) -> bool:
    """Whether `name` is meant as a directory rather than a hub id ("owner/model")."""
    if Path(name).expanduser().exists():
        return True
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def _attention_implementation(config: PretrainedConfig) -> str:
    """SDPA where the architecture has it (fused kernels, less memory), else eager."""
    model_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING.get(type(config), None)
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def _model_error(name: str, error: Exception) -> ModelError:
    """Say why `name` could not be loaded, and what to do about it."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, LocalEntryNotFoundError):
            return ModelError(
                f"cannot load model {name!r}: the Hugging Face hub cannot be reached (or "
                "offline mode is on) and the model is not in the local cache; pass a local "
                "model directory instead (--model PATH)"
            )
        if isinstance(cause, RepositoryNotFoundError):
            return ModelError(f"cannot load model {name!r}: there is no such model on the hub")
        cause = cause.__cause__ or cause.__context__
    return ModelError(f"cannot load model {name!r}: {error}")


def load_model(
    name: str, device: torch.device, dtype: torch.dtype, attention: str | None = None
) -> LoadedModel:
    """Load the tokenizer and sequence-classification model from a hub id or a directory.

    The model comes back in eval mode, on `device`, in `dtype`, with SDPA
    attention where its architecture has it (`attention` names another, e.g.
    "eager", for comparisons).
    """
    local = _is_local(name)
    source = str(Path(name).expanduser()) if local else name
    if local and not Path(source).is_dir():
        raise ModelError(f"cannot load model {name!r}: no such directory")
    if local and not (Path(source) / CONFIG_FILE).is_file():
        raise ModelError(
            f"cannot load model {name!r}: the directory has no {CONFIG_FILE}, "
            "so it is not a saved transformers model"
        )
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            config=config,
            dtype=dtype,
            attn_implementation=attention or _attention_implementation(config),
        )
        model = model.to(device).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        # OSError: missing files or no hub; ValueError/KeyError: not a model
        # transformers knows; RuntimeError: torch could not place the weights.
        raise _model_error(name, error) from None
    # Without tokenizer files transformers builds an empty tokenizer of the
    # model's class instead of failing: every word would become <unk>.
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ModelError(
            f"cannot load model {name!r}: no tokenizer files were found "
            "(its tokenizer knows nothing but special tokens)"
        )
    return LoadedModel(tokenizer=tokenizer, model=model)
