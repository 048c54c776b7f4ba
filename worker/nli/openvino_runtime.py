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
The compiled model is kept beside the export (FUSED_DIR, or UNFUSED_DIR where
OpenVINO compiles it without its generated kernels), in a directory per
OpenVINO version, options and CPU (`_compilation_key`): the first start-up
compiles it (seconds for distilbart-mnli-12-3), later ones read it back without
the export, and one unused for a month goes (worker.nli.onnx_runtime.mark_used).

int8 (the opt-in) runs here too where the CPU has an int8 dot product (VNNI or
AMX), quantized statically: NNCF (OpenVINO's quantizer) measures the ranges the
float32 model's activations take on calibration batches
(worker.nli.int8_calibration) and rounds the products' weights to int8 (per
output channel) and their inputs with scales fixed from those ranges (its
preset leaves a few inputs, attention's output projections' among them, as they
are); attention's products, softmax, layer norms and activations stay in bfloat16
(float32 where the CPU has no bfloat16 multiply). The quantized model is kept
beside the export (INT8_DIR and the calibration's digest), made once, in a
minute or two for distilbart-mnli-12-3 on two cores. On a 2-core AMD EPYC
(Zen 4, AVX512-VNNI) its passes ran faster than those of OpenVINO's dynamic
quantization (each product quantizing its input as it runs, per token: this
worker's int8 before), and on trained proxies its scores stayed about as near
float32's (README, Slow on a CPU). ONNX Runtime's int8 (worker.nli.onnx_runtime:
weights per tensor, inputs quantized as it runs, attention in float32) stays
the int8 of CPUs without an int8 dot product, OpenVINO's having been measured
only on CPUs with one, and of models OpenVINO or NNCF cannot run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import openvino
import torch
from openvino import opset13

from worker.nli import int8_calibration
from worker.nli.forward import Arrays
from worker.nli.onnx_runtime import (
    CACHE_MAX_IDLE_S,
    INT8,
    LOGITS,
    ExportedForward,
    mark_used,
    written_once,
)
from worker.nli.precision import DETECTED_FLAGS, cpu_flags

log = logging.getLogger(__name__)

BFLOAT16 = "bfloat16"
PRECISIONS = (BFLOAT16, INT8)
CPU = "CPU"
# What OpenVINO's CPU plugin lists among its capabilities where the CPU
# multiplies bfloat16 in hardware (AVX512-BF16 or AMX).
BF16_CAPABILITY = "BF16"
# The compiled model, beside the export, with OpenVINO's generated kernels or without
# them (see `_compiled`): OpenVINO's cache does not tell the two apart. In each, a
# directory per `_compilation_key` holds OpenVINO's cache of that compilation.
FUSED_DIR = "openvino-fused"
UNFUSED_DIR = "openvino"
SNIPPETS_MODE = "SNIPPETS_MODE"
SNIPPETS_OFF = "DISABLE"
# Where OpenVINO could not generate its kernels for a compilation, a directory of this
# prefix in FUSED_DIR says so, named by what it depends on (see `_compilation_key`), its
# reason inside: later start-ups compile without them at once, for a month after it was
# written (CACHE_MAX_IDLE_S); then one tries again, so that a failure that was not the
# model's costs that month at most.
REFUSED_PREFIX = "refused-"
REASON_FILE = "reason.txt"
# The int8 model, beside the export, in a directory named by this and the digest of
# its calibration and NNCF's version; the suffix names the recipe (static, NNCF's
# transformer preset without SmoothQuant, attention's keys as `_keys_split_like_queries`
# leaves them): a new recipe makes a new one.
INT8_DIR = "openvino-int8-static-v2"
INT8_MODEL = "model.xml"
NNCF = "nncf"
# Attention's keys as the export transposes them for the scores' product, (batch,
# heads, dims, tokens), and split into heads as its queries are, (batch, heads, tokens,
# dims) (see `_keys_split_like_queries`).
KEYS_TRANSPOSED = [0, 2, 3, 1]
HEADS_SPLIT = [0, 2, 1, 3]
# NNCF's SmoothQuant strength that turns it off.
NO_SMOOTH_QUANT = -1


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
        calibration: Sequence[Arrays] = (),
        fused_kernels: bool = True,
    ) -> None:
        """`path` is the model's float32 ONNX export; int8 is calibrated on the forward
        batches `calibration` (see `int8_model`). `profile` keeps OpenVINO's per-operator
        times of every pass (`op_seconds`), for the benchmark; the worker runs without.
        `fused_kernels=False` compiles without OpenVINO's generated kernels (see
        `_compiled`), for the benchmark's levers."""
        super().__init__(path, input_names, precision)
        if precision == INT8 and not calibration:
            raise ValueError("int8 needs calibration batches")
        self.calibration = calibration
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
        }
        if profile:
            config["PERF_COUNT"] = True
        source = int8_model(core, path, calibration) if precision == INT8 else path
        # The compiled model is kept beside the export it comes from: a restart reads it
        # back instead of reading and compiling the export.
        compiled = _compiled(core, source, config, fused_kernels, None if profile else path.parent)
        chosen = compiled.get_property("INFERENCE_PRECISION_HINT")
        if precision == BFLOAT16 and chosen != openvino.Type.bf16:
            raise RuntimeError(f"OpenVINO chose {chosen} instead of bfloat16 on this CPU")
        self._request = compiled.create_infer_request()
        self._logits = compiled.output(LOGITS)
        self._profile = profile
        self.op_seconds: Counter[str] = Counter()

    def recompiled(self, profile: bool = False, fused_kernels: bool = True) -> OpenVinoForward:
        """The same model (export, precision and calibration) compiled again with other
        options: the benchmark's profile and levers."""
        return OpenVinoForward(
            self.path,
            self.input_names,
            self.precision,
            profile=profile,
            calibration=self.calibration,
            fused_kernels=fused_kernels,
        )

    def __call__(self, arrays: Arrays) -> torch.Tensor:
        # The request reuses its output buffer at the next pass: the logits are copied out.
        logits = self._request.infer(arrays)[self._logits]
        if self._profile:
            for node in self._request.get_profiling_info():
                self.op_seconds[node.node_type] += node.real_time.total_seconds()
        return torch.from_numpy(np.array(logits, dtype=np.float32))


def _compiled(
    core: openvino.Core,
    source: Path,
    config: dict[str, object],
    fused_kernels: bool,
    cache: Path | None,
) -> openvino.CompiledModel:
    """`source` compiled with OpenVINO's generated kernels ("snippets", which fuse each
    attention block's products, softmax and the conversions between them into one
    kernel: on a 2-core Zen 4 EPYC int8 passes ran 1.10x faster with them, bfloat16's
    about as fast; `python -m bench.levers`), or without them where
    `fused_kernels` is False or its code generator cannot build them for the model
    (DeBERTa's attention: "not enough registers"). Kept in `cache` (None: nowhere),
    in a directory of each kind, per `_compilation_key`, marked used at each start-up
    (`mark_used`); where it could not build them, the cache says so (REFUSED_PREFIX),
    and later start-ups spare the try (seconds for a DeBERTa-v3-base)."""

    key = _compilation_key(core, source, config)

    def compile_model(fused: bool) -> openvino.CompiledModel:
        options = dict(config)
        if not fused:
            options[SNIPPETS_MODE] = SNIPPETS_OFF
        if cache is None:
            return core.compile_model(source, CPU, options)
        kept = cache / (FUSED_DIR if fused else UNFUSED_DIR) / key
        options["CACHE_DIR"] = str(kept)
        compiled = core.compile_model(source, CPU, options)
        mark_used(kept, cache)
        return compiled

    if not fused_kernels:
        return compile_model(fused=False)
    refused = None
    if cache is not None:
        refused = cache / FUSED_DIR / f"{REFUSED_PREFIX}{key}"
        noted = _refusal(refused)
        if noted is not None:
            log.info(
                "compiling %s without OpenVINO's fused kernels, which it could not generate "
                "for it before (%s; removing %s tries again)",
                source.parent.name,
                noted,
                refused,
            )
            return compile_model(fused=False)
        # None, or one a month old: this start-up tries again.
        shutil.rmtree(refused, ignore_errors=True)
    try:
        return compile_model(fused=True)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1]
    log.info(
        "OpenVINO cannot generate its fused kernels for %s (%s): compiled without them",
        source.parent.name,
        reason,
    )
    compiled = compile_model(fused=False)
    if refused is not None:
        # Said once the model compiles without them; a cache it cannot write only costs
        # the next start-up the try.
        with contextlib.suppress(OSError):
            refused.parent.mkdir(parents=True, exist_ok=True)
            with written_once(refused) as staging:
                (staging / REASON_FILE).write_text(reason + "\n")
    return compiled


def _refusal(refused: Path) -> str | None:
    """The reason noted in `refused` (see REFUSED_PREFIX), where it was noted less than
    CACHE_MAX_IDLE_S ago."""
    note = refused / REASON_FILE
    with contextlib.suppress(OSError):
        if time.time() - note.stat().st_mtime < CACHE_MAX_IDLE_S:
            return note.read_text().strip()
    return None


def _compilation_key(core: openvino.Core, source: Path, config: dict[str, object]) -> str:
    """A digest of what OpenVINO's code generator depends on: the model file, the
    options, OpenVINO's version and the CPU (its name, vector instructions and
    bfloat16 and int8 products), so that a cache shared by other CPUs stays right."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (
        source.parent.name,
        source.name,
        *(f"{name}={value}" for name, value in sorted(config.items())),
        openvino.get_version(),
        str(core.get_property(CPU, "FULL_DEVICE_NAME")),
        torch.backends.cpu.get_cpu_capability(),
        ",".join(cpu_flags(tuple(DETECTED_FLAGS))),
    ):
        digest.update(part.encode())
    return digest.hexdigest()


def int8_model(core: openvino.Core, export: Path, calibration: Sequence[Arrays]) -> Path:
    """The export quantized statically to int8 on the forward batches `calibration`
    (INT8_DIR and their digest, beside it), made first unless another start-up did."""
    key = int8_calibration.digest(calibration, importlib.metadata.version(NNCF))
    target = export.parent / f"{INT8_DIR}-{key}"
    if (target / INT8_MODEL).is_file():
        mark_used(target, export.parent)
        return target / INT8_MODEL
    log.info(
        "quantizing %s to int8 on %d calibration batches (once per model and calibration)",
        export.parent.name,
        len(calibration),
    )
    started = time.perf_counter()
    # Imported here: only a start-up that quantizes needs it, and it takes seconds.
    import nncf
    from nncf import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    model = core.read_model(export)
    _keys_split_like_queries(model)
    with _nncf_quiet(), _nncf_errors():
        quantized = nncf.quantize(
            model,
            nncf.Dataset(list(calibration)),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(names=_activation_products(model)),
            # No SmoothQuant (which the transformer preset applies): moving the
            # activations' outliers into the weights moved trained proxies' scores
            # several times further from float32's (see the README, Slow on a CPU).
            advanced_parameters=AdvancedQuantizationParameters(
                smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=NO_SMOOTH_QUANT)
            ),
        )
    with written_once(target) as staging:
        openvino.save_model(quantized, staging / INT8_MODEL, compress_to_fp16=False)
    log.info("quantized to int8 in %.0f s", time.perf_counter() - started)
    mark_used(target, export.parent)
    return target / INT8_MODEL


def _keys_split_like_queries(model: openvino.Model) -> int:
    """Attention's scores rewritten as OpenVINO's fused attention kernel takes them best;
    returns how many. The export multiplies the queries by the keys transposed to
    (batch, heads, dims, tokens) (KEYS_TRANSPOSED), a transpose the kernel leaves
    outside itself; here the keys are split into heads as the queries are (HEADS_SPLIT)
    and the product transposes them (`transpose_b`). The same numbers, fewer moves: on a
    2-core Zen 4 EPYC the transposes' time in an int8 pass over long texts fell to a
    quarter (`python -m bench.levers --profile`, README: Levers)."""
    rewritten = 0
    for transpose in model.get_ordered_ops():
        if transpose.get_type_name() != "Transpose":
            continue
        order = transpose.input_value(1).get_node()
        if order.get_type_name() != "Constant" or order.get_data().tolist() != KEYS_TRANSPOSED:
            continue
        for target in list(transpose.output(0).get_target_inputs()):
            product = target.get_node()
            if product.get_type_name() != "MatMul" or target.get_index() != 1:
                continue
            attributes = product.get_attributes()
            if attributes["transpose_b"]:
                continue
            keys = opset13.transpose(
                transpose.input_value(0), opset13.constant(np.array(HEADS_SPLIT, dtype=np.int64))
            )
            scores = opset13.matmul(
                product.input_value(0), keys, attributes["transpose_a"], transpose_b=True
            )
            scores.set_friendly_name(product.get_friendly_name())
            for reader in list(product.output(0).get_target_inputs()):
                reader.replace_source_output(scores.output(0))
            rewritten += 1
    model.validate_nodes_and_infer_types()
    return rewritten


def _activation_products(model: openvino.Model) -> list[str]:
    """The matrix products of two activations (attention's), which stay in bfloat16 as
    softmax does: NNCF's transformer preset leaves BART's alone, not all of DeBERTa's."""
    return [
        node.get_friendly_name()
        for node in model.get_ordered_ops()
        if node.get_type_name() == "MatMul"
        and node.input_value(1).get_node().get_type_name() != "Constant"
    ]


@contextlib.contextmanager
def _nncf_errors() -> Iterator[None]:
    """NNCF's own errors (a model it does not support, say) derive from Exception alone:
    they are raised as the RuntimeError a runtime that cannot run a model raises."""
    try:
        yield
    except Exception as error:
        raise RuntimeError(f"NNCF cannot quantize it: {type(error).__name__}: {error}") from error


@contextlib.contextmanager
def _nncf_quiet() -> Iterator[None]:
    """NNCF writes its log and progress bars to stdout, where `zsc-worker classify` prints
    its results: its warnings go to the worker's log instead, the rest nowhere."""
    nncf_log = logging.getLogger(NNCF)
    nncf_log.handlers.clear()
    nncf_log.propagate = True
    nncf_log.setLevel(logging.WARNING)
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere):
        yield
