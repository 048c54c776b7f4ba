"""Float32 and int8 on the CPU: the model exported to ONNX and run by ONNX Runtime.

Why ONNX Runtime for float32: it fuses what torch runs op by op (layer norms,
GELU, the attention's reshapes) and pays less per operator. On a 2-core AMD
EPYC (Zen 4) the classifier scored 16 texts x 8 labels (distilbart-mnli-12-3's
shape) in 14.4 s against torch's 18.8 s, with logits within 1e-5 of torch's.

Why ONNX Runtime for int8 where the CPU has no int8 dot product (with one,
int8 runs in OpenVINO: worker.nli.openvino_runtime), rather than torch's own
dynamic quantization: on the same CPU (AVX512-VNNI) a 512x1024x1024 product
ran at 716 GOP/s through ONNX Runtime's dynamically quantized MatMul and at
331 through torch's quantized Linear, and the whole classifier ran 1.3x
faster. The recipe is ONNX Runtime's dynamic quantization (optimum's
AVX512-VNNI recipe): MatMul weights in int8, per tensor; activations
quantized to uint8 batch by batch; softmax and layer norms stay in float32.

The export traces transformers' eager attention, not SDPA: torch exports SDPA
with a guard against rows whose every key is masked (IsNaN and Where over
every attention score), a pass over the batch x heads x tokens x tokens
scores of every layer that the eager graph (mask added, then softmax) does
without. The scores are the same.

ONNX Runtime's CPU kernels have no fast bfloat16 path: bfloat16 runs the same
float32 export in OpenVINO (worker.nli.openvino_runtime). The export takes from
seconds to a minute, so it is cached under XDG_CACHE_HOME (~/.cache) by a
digest of the weights and of the versions that shape the graph: a restart
loads it in a second or two. What each runtime derives from it (int8 weights,
a compiled model) is kept beside it, made once. Where the cache cannot be
written the model is exported into a temporary directory, each start-up again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime
import torch
import transformers
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from worker.errors import ModelError
from worker.nli.forward import (
    ATTENTION_MASK,
    INPUT_IDS,
    TOKEN_TYPE_IDS,
    Arrays,
    without_cache,
)

log = logging.getLogger(__name__)

# ONNX Runtime's own errors, which derive from Exception alone.
ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_state.EPFail,
    ort_state.EngineError,
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoModel,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)
# What a model that cannot be exported, quantized or loaded raises: torch's
# exporter and ONNX's checker raise RuntimeError, ValueError or TypeError.
EXPORT_ERRORS: tuple[type[Exception], ...] = (
    RuntimeError,
    ValueError,
    TypeError,
    OSError,
    *ORT_ERRORS,
)

FLOAT32 = "float32"
INT8 = "int8"
PRECISIONS = (FLOAT32, INT8)
LOGITS = "logits"
# The attention the export traces (see the module's docstring).
EAGER = "eager"
# ONNX operator set of the export: 17 has LayerNormalization, which ONNX
# Runtime runs fused.
OPSET = 17
# Bump when the export changes: old caches are then ignored.
RECIPE = "export-v5 (BART, DeBERTa-v2: last layer on the pooled row; eager attention; float32)"
# The export with its MatMul weights in int8, beside it; the suffix names the recipe
# (dynamic quantization, weights per tensor): a new recipe makes a new one.
INT8_DIR = "onnxruntime-int8-v1"
CACHE_DIR = "zsc-worker/onnx"
# The digest hashes small tensors whole (biases, norms, a classification head:
# what a light fine-tune changes alone) and an even sample of each larger one,
# which any fine-tune of it changes too: hashing a large model whole would cost
# seconds at every start-up.
DIGEST_WHOLE_ELEMENTS = 1 << 20
DIGEST_SAMPLED_ELEMENTS = 1 << 16
# ONNX Runtime's quantizer logs through the root logger, from files under here.
QUANTIZER_SOURCE = "onnxruntime/quantization/"
MODEL_FILE = "model.onnx"
# What the cache holds is removed once unused for this long: each new model, and
# each version of torch, transformers or ONNX Runtime, adds an export (about 1 GB
# in float32 for distilbart-mnli-12-3), and beside it each version of OpenVINO or
# NNCF, each CPU and each recipe adds what the runtimes derive from it (OpenVINO's
# compiled model, as large again; int8 models, a quarter of that). Every load marks
# what it uses (`mark_used`).
DAY_S = 24 * 3600
CACHE_MAX_IDLE_S = 30 * DAY_S
# Two example pairs of different lengths: the export sees padding, so nothing
# that depends on an all-ones mask is traced into the graph.
EXAMPLE_PAIRS = (
    ("A short premise.", "This example is short."),
    ("A somewhat longer premise, with a clause or two more.", "This example is long."),
)


def cache_root() -> Path:
    """Where exported models are kept: $XDG_CACHE_HOME/zsc-worker/onnx, else ~/.cache/..."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / CACHE_DIR


def model_digest(model: PreTrainedModel, input_names: frozenset[str]) -> str:
    """A digest of everything the graph depends on: weights (see DIGEST_WHOLE_ELEMENTS),
    inputs, recipe, versions."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (
        RECIPE,
        str(OPSET),
        torch.__version__,
        transformers.__version__,
        onnxruntime.__version__,
        model.config.to_json_string(use_diff=False),
        ",".join(sorted(input_names)),
    ):
        digest.update(part.encode())
    for name, tensor in model.state_dict().items():
        values = tensor.detach().reshape(-1)
        if values.numel() > DIGEST_WHOLE_ELEMENTS:
            values = values[:: values.numel() // DIGEST_SAMPLED_ELEMENTS]
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(memoryview(values.contiguous().cpu().numpy()).cast("B"))
    return digest.hexdigest()


class _Logits(torch.nn.Module):
    """The model as the export sees it: named arrays in, logits out, no decoder cache."""

    def __init__(self, model: PreTrainedModel, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.no_cache = without_cache(model)

    def forward(self, *arrays: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.input_names, arrays, strict=True))
        logits: torch.Tensor = self.model(**inputs, **self.no_cache).logits
        return logits


def export(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_names: frozenset[str],
    target: Path,
) -> None:
    """Export a float32 CPU model to ONNX at `target`."""
    names = tuple(n for n in (INPUT_IDS, ATTENTION_MASK, TOKEN_TYPE_IDS) if n in input_names)
    premises, hypotheses = zip(*EXAMPLE_PAIRS, strict=True)
    example = tokenizer(list(premises), list(hypotheses), padding=True, return_tensors="pt")
    axes = {name: {0: "pairs", 1: "tokens"} for name in names} | {LOGITS: {0: "pairs"}}
    with warnings.catch_warnings(), _attention(model, EAGER):
        # The tracer warns about every Python branch on a shape; the example
        # has padding, and the caller checks the graph against torch.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Logits(model, names),
            tuple(example[name] for name in names),
            str(target),
            input_names=list(names),
            output_names=[LOGITS],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def int8_model(export: Path) -> Path:
    """The export with its MatMul weights in int8 (INT8_DIR beside it), made first unless
    another start-up did: ONNX Runtime's dynamic quantization (see the module's docstring)."""
    target = export.parent / INT8_DIR
    if not (target / MODEL_FILE).is_file():
        with written_once(target) as staging, _quiet_quantizer():
            quantize_dynamic(
                export,
                staging / MODEL_FILE,
                weight_type=QuantType.QInt8,
                extra_options={"MatMulConstBOnly": True},
            )
    mark_used(target, export.parent)
    return target / MODEL_FILE


@contextlib.contextmanager
def written_once(target: Path) -> Iterator[Path]:
    """A directory to write what belongs at `target` into, moved there whole after the
    block: another start-up on the same cache that finished first keeps its own copy
    (either is whole), and a crash leaves no half-written `target` behind."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        with contextlib.suppress(OSError):
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _attention(model: PreTrainedModel, implementation: str) -> Iterator[None]:
    """`model` with attention `implementation` for the block, its own again after."""
    own = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(own)


class _FromQuantizer(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return QUANTIZER_SOURCE not in Path(record.pathname).as_posix()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Mute the quantizer's warnings on the root logger: advice for static quantization, and
    tensors it leaves in float32 (index outputs), neither of which is the worker's to act on."""
    root = logging.getLogger()
    quiet = _FromQuantizer()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _writable(root: Path) -> bool:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(root, os.W_OK)


def mark_used(entry: Path, top: Path) -> None:
    """`entry` in the cache marked used, with each directory above it below `top`, and
    what beside each of them has gone unused for CACHE_MAX_IDLE_S removed (`prune`):
    models other versions or recipes made, which nothing reads any more. A cache it
    cannot write is left as it is."""
    now = time.time()
    while top in entry.parents:
        with contextlib.suppress(OSError):
            os.utime(entry)
        prune(entry.parent, keep=entry.name, now=now)
        entry = entry.parent


def prune(root: Path, keep: str, now: float) -> None:
    """Remove what is in `root` unused for CACHE_MAX_IDLE_S, `keep` and an export's
    MODEL_FILE aside (an export's directory is marked used, its file is not).

    Half-written entries left by a start-up that died are as old as it, and go too.
    """
    for entry in root.iterdir():
        with contextlib.suppress(OSError):
            if (
                entry.name not in (keep, MODEL_FILE)
                and now - entry.stat().st_mtime > CACHE_MAX_IDLE_S
            ):
                log.info(
                    "removing %s from the model cache: unused for %d days",
                    entry,
                    CACHE_MAX_IDLE_S // DAY_S,
                )
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()


class ExportedForward:
    """What the runtimes of the CPU's float32 export (`export`) share: the `Forward`
    properties of a runtime on the CPU, and the export it runs (`path`), which the
    benchmark runs in the other runtimes too."""

    runtime: ClassVar[str]
    """How `zsc_model_info` names the runtime."""
    precisions: ClassVar[tuple[str, ...]]

    def __init__(self, path: Path, input_names: frozenset[str], precision: str) -> None:
        if precision not in self.precisions:
            raise ValueError(
                f"{self.runtime} runs {' or '.join(self.precisions)}, not {precision!r}"
            )
        self.path = path
        self._input_names = input_names
        self._precision = precision

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def input_names(self) -> frozenset[str]:
        return self._input_names


class OnnxForward(ExportedForward):
    """An ONNX Runtime session of the model, on the CPU."""

    runtime = "onnxruntime"
    precisions = PRECISIONS

    def __init__(self, path: Path, input_names: frozenset[str], precision: str) -> None:
        """`path` is the model's float32 export; int8 runs its quantized copy (`int8_model`)."""
        super().__init__(path, input_names, precision)
        options = onnxruntime.SessionOptions()
        # As many threads as torch uses: the worker's one setting of the CPU's share.
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = int8_model(path) if precision == INT8 else path
        self._session = onnxruntime.InferenceSession(
            str(source), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, arrays: Arrays) -> torch.Tensor:
        try:
            (logits,) = self._session.run([LOGITS], arrays)
        except ORT_ERRORS as error:
            # What the classifier reports as an inference failure, as torch's errors are.
            raise RuntimeError(f"ONNX Runtime: {error}") from error
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))


@contextlib.contextmanager
def export_cache() -> Iterator[Path]:
    """The directory exports are kept in for the block: the cache, or where it cannot be
    written a temporary directory (removed after the block, so exported at each start-up)."""
    root = cache_root()
    if _writable(root):
        yield root
        return
    log.warning(
        "cannot write the ONNX model cache %s: exporting into a temporary directory, "
        "again at every start-up",
        root,
    )
    with tempfile.TemporaryDirectory(prefix="zsc-onnx-") as scratch:
        yield Path(scratch)


@contextlib.contextmanager
def runtime_errors(failure: str) -> Iterator[None]:
    """What a model that does not export, or that a runtime cannot run, raises, as the
    `ModelError` that says so: `failure` ("cannot run model ... in ...") and the cause."""
    try:
        yield
    except EXPORT_ERRORS as error:
        raise ModelError(f"{failure}: {type(error).__name__}: {error}") from None


def exported(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    input_names: frozenset[str],
    root: Path,
) -> Path:
    """The float32 export of a float32 CPU model under `root` (see `export_cache`), made
    first unless another start-up did. Raises what `runtime_errors` turns into a
    `ModelError`."""
    digest = model_digest(model, input_names)
    path = root / digest / MODEL_FILE
    if not path.is_file():
        log.info("exporting %s to ONNX (once per model and versions)", name)
        with written_once(root / digest) as staging:
            export(model, tokenizer, input_names, staging / MODEL_FILE)
    mark_used(root / digest, root)
    return path
