"""What runs a forward pass: padded arrays in, logits out.

The classifier pads pairs into arrays and reads logits; what computes them is
a `Forward`: a transformers model in torch (`TorchForward`), or the same model
exported to ONNX and run by ONNX Runtime (worker.nli.onnx_runtime) or OpenVINO
(worker.nli.openvino_runtime).
"""

from __future__ import annotations

import inspect
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The arrays every forward takes; `token_type_ids` only where the model uses them.
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"

Arrays = dict[str, npt.NDArray[np.int64]]


class Forward(Protocol):
    """A model's forward pass over a padded batch of premise/hypothesis pairs."""

    @property
    def device(self) -> torch.device:
        """Where it computes."""
        ...

    @property
    def precision(self) -> str:
        """The precision it computes in: float32, bfloat16, float16 or int8."""
        ...

    @property
    def runtime(self) -> str:
        """What computes it: torch, onnxruntime or openvino."""
        ...

    @property
    def input_names(self) -> frozenset[str]:
        """The arrays it takes (INPUT_IDS, ATTENTION_MASK, and maybe TOKEN_TYPE_IDS)."""
        ...

    def __call__(self, arrays: Arrays) -> torch.Tensor:
        """The logits of a batch, one row per pair; on a GPU they may still be in flight."""
        ...


def model_inputs(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> frozenset[str]:
    """The inputs the pipeline gives `model`: ids, mask, and token types where they count.

    Models with type_vocab_size 0 (DeBERTa-v3) ignore token types.
    """
    forward_args = inspect.signature(model.forward).parameters
    uses_token_types = (
        TOKEN_TYPE_IDS in tokenizer.model_input_names
        and TOKEN_TYPE_IDS in forward_args
        and getattr(model.config, "type_vocab_size", 1) > 0
    )
    return frozenset(
        {INPUT_IDS, ATTENTION_MASK} | ({TOKEN_TYPE_IDS} if uses_token_types else set())
    )


def without_cache(model: PreTrainedModel) -> dict[str, bool]:
    """The pipeline turns the decoder cache off for sequence classification."""
    return (
        {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    )


class TorchForward:
    """A transformers model on its device, in its dtype (or quantized)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
        self._model = model
        self._input_names = model_inputs(tokenizer, model)
        self._no_cache = without_cache(model)

    @property
    def device(self) -> torch.device:
        return self._model.device

    @property
    def precision(self) -> str:
        return str(self._model.dtype).removeprefix("torch.")

    @property
    def runtime(self) -> str:
        return "torch"

    @property
    def input_names(self) -> frozenset[str]:
        return self._input_names

    def __call__(self, arrays: Arrays) -> torch.Tensor:
        inputs = {name: self._to_device(array) for name, array in arrays.items()}
        logits: torch.Tensor = self._model(**inputs, **self._no_cache).logits
        return logits

    def _to_device(self, array: npt.NDArray[np.int64]) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type != "cuda":
            return tensor
        # From page-locked memory the copy is asynchronous: the host goes on padding.
        return tensor.pin_memory().to(self.device, non_blocking=True)
