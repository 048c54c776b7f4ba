"""bfloat16 and int8 on the CPU: the model's float32 ONNX export run by OpenVINO.

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

int8 (the opt-in) runs here too where the CPU has an int8 dot product (VNNI or
AMX): the export's product weights are rounded to int8 once, per output
channel (kept beside the export as OpenVINO's own model, INT8_DIR), and
OpenVINO quantizes each product's input as it runs ("dynamic quantization"),
per token in groups of the model's width, so that the products run on int8
instructions while attention, layer norms and activations stay in bfloat16
(float32 where the CPU has no bfloat16 multiply). On a 2-core AMD EPYC (Zen 4,
AVX512-VNNI), OpenVINO's default groups of 32 ran well behind groups of the
model's width. ONNX Runtime's int8 (worker.nli.onnx_runtime: weights per
tensor, attention in float32) stays the int8 of CPUs without an int8 dot
product, OpenVINO's having been measured only on CPUs with one, and of models
OpenVINO cannot run.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import openvino
import torch
from openvino import opset13

from worker.nli.forward import Arrays
from worker.nli.onnx_runtime import INT8, LOGITS, ExportedForward, written_once

BFLOAT16 = "bfloat16"
PRECISIONS = (BFLOAT16, INT8)
CPU = "CPU"
# What OpenVINO's CPU plugin lists among its capabilities where the CPU
# multiplies bfloat16 in hardware (AVX512-BF16 or AMX).
BF16_CAPABILITY = "BF16"
COMPILED_DIR = "openvino"
# The model with int8 product weights, beside the export; the suffix names the
# recipe (int8 per output channel, symmetric): a new recipe makes a new one.
INT8_DIR = "openvino-int8-v1"
INT8_MODEL = "model.xml"
INT8_MAX = 127
# Where OpenVINO reads the dynamic quantization's group size from a model's own
# runtime information, so that a compiled model read back from the cache has it too.
GROUP_SIZE_KEY = ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"]


class OpenVinoForward(ExportedForward):
    """An OpenVINO compiled model on the CPU, computing in bfloat16, or in int8 (see the
    module's docstring)."""

    runtime = "openvino"
    precisions = PRECISIONS

    def __init__(
        self,
        path: Path,
        input_names: frozenset[str],
        precision: str = BFLOAT16,
        profile: bool = False,
    ) -> None:
        """`path` is the model's float32 ONNX export. `profile` keeps OpenVINO's
        per-operator times of every pass (`op_seconds`), for the benchmark; the worker
        runs without."""
        super().__init__(path, input_names, precision)
        core = openvino.Core()
        has_bf16 = BF16_CAPABILITY in core.get_property(CPU, "OPTIMIZATION_CAPABILITIES")
        if precision == BFLOAT16 and not has_bf16:
            raise RuntimeError("this CPU has no bfloat16 multiply OpenVINO can use")
        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": openvino.Type.bf16 if has_bf16 else openvino.Type.f32,
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
        source = int8_model(core, path) if precision == INT8 else path
        compiled = core.compile_model(source, CPU, config)
        chosen = compiled.get_property("INFERENCE_PRECISION_HINT")
        if precision == BFLOAT16 and chosen != openvino.Type.bf16:
            raise RuntimeError(f"OpenVINO chose {chosen} instead of bfloat16 on this CPU")
        self._request = compiled.create_infer_request()
        self._logits = compiled.output(LOGITS)
        self._profile = profile
        self.op_seconds: Counter[str] = Counter()

    def __call__(self, arrays: Arrays) -> torch.Tensor:
        # The request reuses its output buffer at the next pass: the logits are copied out.
        logits = self._request.infer(arrays)[self._logits]
        if self._profile:
            for node in self._request.get_profiling_info():
                self.op_seconds[node.node_type] += node.real_time.total_seconds()
        return torch.from_numpy(np.array(logits, dtype=np.float32))


def int8_model(core: openvino.Core, export: Path) -> Path:
    """The export with its product weights in int8 (INT8_DIR beside it), made first unless
    another start-up did."""
    target = export.parent / INT8_DIR
    if (target / INT8_MODEL).is_file():
        return target / INT8_MODEL
    model = core.read_model(export)
    widths = [_weights_to_int8(product) for product in model.get_ordered_ops()]
    if not any(widths):
        raise RuntimeError("the model has no matrix product with constant weights to round")
    # Groups as wide as every product's inner dimension allows (the model's width):
    # one scale per token for most products; narrower groups ran slower.
    model.set_rt_info(str(math.gcd(*widths)), GROUP_SIZE_KEY)
    with written_once(target) as staging:
        openvino.save_model(model, staging / INT8_MODEL, compress_to_fp16=False)
    return target / INT8_MODEL


def _weights_to_int8(node: openvino.Node) -> int:
    """Round the constant weights of matrix product `node` to int8, per output channel,
    in place; their inner dimension, or 0 where `node` is no such product."""
    if node.get_type_name() != "MatMul":
        return 0
    weights = node.input_value(1).get_node()
    if weights.get_type_name() != "Constant" or len(weights.get_output_shape(0)) != 2:
        return 0
    values = weights.get_data().astype(np.float32)
    # (inner, outputs), or (outputs, inner) where the product transposes them.
    inner = 1 if node.get_attributes()["transpose_b"] else 0
    scales = np.abs(values).max(axis=inner, keepdims=True) / INT8_MAX
    scales = np.maximum(scales, np.finfo(np.float32).tiny)
    rounded = np.clip(np.rint(values / scales), -INT8_MAX, INT8_MAX).astype(np.int8)
    # The pattern OpenVINO's CPU plugin runs as a product on compressed weights.
    restored = opset13.multiply(
        opset13.convert(opset13.constant(rounded), openvino.Type.f32),
        opset13.constant(scales),
    )
    node.input(1).replace_source_output(restored.output(0))
    return int(values.shape[inner])
