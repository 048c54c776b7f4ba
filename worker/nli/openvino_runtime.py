"""bfloat16 on the CPU: the model's float32 ONNX export run by OpenVINO in bfloat16.

Why OpenVINO rather than torch for bfloat16: the matrix products run at the
hardware's bfloat16 rate in both, but torch's CPU attention (its flash-attention
kernel, or eager batched products) runs the short 64-wide heads of a zero-shot
pair at a fraction of that rate: on a 2-core AMD EPYC (Zen 4, AVX512-BF16)
attention took 11-14% of a torch pass for about 2% of its FLOPs (`python -m
bench.levers --profile`). OpenVINO compiles the graph with its own attention
and fused layer norms and activations. On that CPU its passes were a few
percent faster than torch's on the same forward batches (`python -m
bench.levers --texts 32`: 21.0-23.2 s against 21.8-24.5 s, the row and its
repeat each), about the size of that machine's noise; it meets OpenVINO's own
pipeline by construction and beats it on batching and the pooled last layer.

It reads the same float32 export as ONNX Runtime (worker.nli.onnx_runtime,
cached there) and computes in bfloat16 where the CPU multiplies it in
hardware, as OpenVINO's "INFERENCE_PRECISION_HINT" lowers the float32 graph.
The compiled model is kept beside the export (COMPILED_DIR), once per
OpenVINO version: the first start-up compiles it (seconds for
distilbart-mnli-12-3), later ones read it back without the export.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import openvino
import torch

from worker.nli.forward import Arrays
from worker.nli.onnx_runtime import LOGITS

BFLOAT16 = "bfloat16"
CPU = "CPU"
# What OpenVINO's CPU plugin lists among its capabilities where the CPU
# multiplies bfloat16 in hardware (AVX512-BF16 or AMX).
BF16_CAPABILITY = "BF16"
RUNTIME = f"OpenVINO ({BFLOAT16})"
COMPILED_DIR = "openvino"


class OpenVinoForward:
    """An OpenVINO compiled model on the CPU, computing in bfloat16."""

    def __init__(self, path: Path, input_names: frozenset[str], profile: bool = False) -> None:
        """`profile` keeps OpenVINO's per-operator times of every pass (`op_seconds`), for
        the benchmark; the worker runs without."""
        core = openvino.Core()
        if BF16_CAPABILITY not in core.get_property(CPU, "OPTIMIZATION_CAPABILITIES"):
            raise RuntimeError("this CPU has no bfloat16 multiply OpenVINO can use")
        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": openvino.Type.bf16,
            # As many threads as torch uses: the worker's one setting of the CPU's share.
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            # One pass at a time, on every thread: the classifier runs them in turn.
            "PERFORMANCE_HINT": "LATENCY",
            # OpenVINO's generated kernels for fused element-wise chains fail to
            # compile DeBERTa's attention ("not enough registers"); BART's passes
            # ran as fast without them.
            "SNIPPETS_MODE": "DISABLE",
        }
        if profile:
            config["PERF_COUNT"] = True
        else:
            # The compiled model is kept beside the export it comes from: a restart
            # reads it back instead of reading and compiling the export.
            config["CACHE_DIR"] = str(path.parent / COMPILED_DIR)
        compiled = core.compile_model(path, CPU, config)
        chosen = compiled.get_property("INFERENCE_PRECISION_HINT")
        if chosen != openvino.Type.bf16:
            raise RuntimeError(f"OpenVINO chose {chosen} instead of bfloat16 on this CPU")
        self._request = compiled.create_infer_request()
        self._logits = compiled.output(LOGITS)
        self._input_names = input_names
        # The export it was compiled from: the benchmark compiles it again to profile it.
        self.path = path
        self._profile = profile
        self.op_seconds: Counter[str] = Counter()

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
        if self._profile:
            for node in self._request.get_profiling_info():
                self.op_seconds[node.node_type] += node.real_time.total_seconds()
        return torch.from_numpy(np.array(logits, dtype=np.float32))
