"""bfloat16 on the CPU: the model's float32 ONNX export run by OpenVINO in bfloat16.

Why OpenVINO rather than torch for bfloat16: the matrix products run at the
hardware's bfloat16 rate in both, but torch's CPU attention (its flash-attention
kernel, or eager batched products) runs the short 64-wide heads of a zero-shot
pair at a fraction of that rate: on a 2-core AMD EPYC (Zen 4, AVX512-BF16)
attention took 12-14% of a torch pass for about 2% of its FLOPs, and more on
long texts. OpenVINO compiles the graph with its own attention and fused
layer norms and activations; on the same CPU it ran the worker's forward
batches of 32 fortunes x 8 labels (distilbart-mnli-12-3's shape) in 21-22 s
against torch's 23-24 s, alternating runs, with logits as close to float32's
as torch's bfloat16 (max |Δ| 0.066 against torch's 0.078 on logits up to 4).

It reads the same float32 export as ONNX Runtime (worker.nli.onnx_runtime,
cached there) and computes in bfloat16 where the CPU multiplies it in
hardware: OpenVINO's "INFERENCE_PRECISION_HINT" lowers the float32 graph's
products, attention and activations to bfloat16 and keeps what needs float32
(softmax sums, layer-norm statistics) in float32. Compiling takes about a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from worker.nli.forward import Arrays
from worker.nli.onnx_runtime import FLOAT32, LOGITS, load_exported

BFLOAT16 = "bfloat16"
CPU = "CPU"
# What OpenVINO's CPU plugin lists among its capabilities where the CPU
# multiplies bfloat16 in hardware (AVX512-BF16 or AMX).
BF16_CAPABILITY = "BF16"
RUNTIME = f"OpenVINO ({BFLOAT16})"


class OpenVinoForward:
    """An OpenVINO compiled model on the CPU, computing in bfloat16."""

    def __init__(self, path: Path, input_names: frozenset[str]) -> None:
        core = openvino.Core()
        if BF16_CAPABILITY not in core.get_property(CPU, "OPTIMIZATION_CAPABILITIES"):
            raise RuntimeError("this CPU has no bfloat16 multiply OpenVINO can use")
        compiled = core.compile_model(
            core.read_model(path),
            CPU,
            {
                "INFERENCE_PRECISION_HINT": openvino.Type.bf16,
                # As many threads as torch uses: the worker's one setting of the CPU's share.
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                # One pass at a time, on every thread: the classifier runs them in turn.
                "PERFORMANCE_HINT": "LATENCY",
                # OpenVINO's generated kernels for fused element-wise chains fail to
                # compile DeBERTa's attention ("not enough registers"); BART's forward
                # batches above took 20.9 and 21.5 s without them, 20.8 s twice with.
                "SNIPPETS_MODE": "DISABLE",
            },
        )
        chosen = compiled.get_property("INFERENCE_PRECISION_HINT")
        if chosen != openvino.Type.bf16:
            raise RuntimeError(f"OpenVINO chose {chosen} instead of bfloat16 on this CPU")
        self._request = compiled.create_infer_request()
        self._logits = compiled.output(LOGITS)
        self._input_names = input_names

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def precision(self) -> str:
        return BFLOAT16

    @property
    def runtime(self) -> str:
        return "openvino"

    @property
    def input_names(self) -> frozenset[str]:
        return self._input_names

    def __call__(self, arrays: Arrays) -> torch.Tensor:
        # The request reuses its output buffer at the next pass: the logits are copied out.
        logits = self._request.infer(arrays)[self._logits]
        return torch.from_numpy(np.array(logits, dtype=np.float32))


def load_openvino(
    name: str, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel
) -> OpenVinoForward:
    """The OpenVINO bfloat16 forward of a float32 CPU model, from its cached float32 export.

    Raises `ModelError` when the model does not export, or OpenVINO cannot run
    it in bfloat16 on this CPU.
    """
    return load_exported(name, tokenizer, model, FLOAT32, RUNTIME, OpenVinoForward)
