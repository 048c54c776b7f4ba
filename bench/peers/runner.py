"""A peer's side of the benchmark, run by the python of that peer's own virtual environment.

A standalone script: it imports nothing from this project (the peer's venv does
not have it) and only what the peer installs. It reads one JSON request from
stdin and writes one JSON answer, a single line, to stdout; everything the
libraries print goes to stderr. It exits 1 with {"error": ...} when the
request fails.

Requests:
- {"task": "pipeline", "runtime": "onnxruntime" | "openvino", "variant": "float32" |
  "int8" | "default", "model": DIR, "work_dir": DIR, "texts": [...], "warmup": [...],
  "labels": [...], "template": "...", "multi_label": bool, "batch_size": N, "threads": N}
  times transformers' zero-shot pipeline over the runtime's model of `model`
  (exported, and quantized for int8, into `work_dir` on first use: later
  requests of a run reuse it). Answer: {"seconds", "cpu_seconds", "scores": [{label:
  score}, ...], "precision", "note", "versions"}.
- {"task": "int8_peak", "shape": [M, K, N], "threads": N, "budget_s": S} times
  ONNX Runtime's MatMulInteger (uint8 x int8 -> int32) of that shape. Answer:
  {"ops_per_s", "note", "versions"}.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# optimum's dynamic-quantization recipes, best first, each with the CPU flag it
# is written for. The VNNI recipe quantizes activations to uint8 without
# reduce_range; the older ones do it with reduce_range where the instruction set
# overflows otherwise.
INT8_RECIPES = (("avx512_vnni", "avx512_vnni"), ("avx512", "avx512f"), ("avx2", "avx2"))
# Per-tensor weight scales, as torch's dynamic quantization (the worker's int8) uses.
PER_CHANNEL = False
# A multiply-add is two operations.
OPS_PER_MAC = 2
PEAK_MIN_REPEATS = 3
ORT_FILE = "model.onnx"
ORT_INT8_FILE = "model_quantized.onnx"
VERSIONS = {
    "onnxruntime": ("onnxruntime", "optimum-onnx", "optimum", "transformers", "torch"),
    "openvino": ("openvino", "optimum-intel", "nncf", "optimum", "transformers", "torch"),
}


def main() -> int:
    # The answer is the only thing on stdout: libraries that print (to Python's
    # stdout or to file descriptor 1) are sent to stderr instead.
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        request = json.load(sys.stdin)
        task = TASKS[request["task"]]
        answer, status = task(request), 0
    except Exception as error:  # every failure becomes the answer's reason
        traceback.print_exc()
        answer, status = {"error": f"{type(error).__name__}: {error}"}, 1
    with os.fdopen(answer_fd, "w") as out:
        out.write(json.dumps(answer) + "\n")
    return status


def run_pipeline(request: dict[str, Any]) -> dict[str, Any]:
    """Time the zero-shot pipeline over the runtime's model; warm-up first, untimed."""
    from transformers import AutoTokenizer, pipeline

    runtime = request["runtime"]
    if runtime == "onnxruntime":
        model, precision, note = onnxruntime_model(request)
    elif runtime == "openvino":
        model, precision, note = openvino_model(request)
    else:
        raise ValueError(f"unknown runtime {runtime!r}")
    tokenizer = AutoTokenizer.from_pretrained(request["model"])
    classifier = pipeline("zero-shot-classification", model=model, tokenizer=tokenizer)
    options = {
        "candidate_labels": list(request["labels"]),
        "hypothesis_template": request["template"],
        "multi_label": request["multi_label"],
        "batch_size": request["batch_size"],
    }
    classifier(list(request["warmup"][:1]), **options)
    wall, cpu = time.perf_counter(), time.process_time()
    results = classifier(list(request["texts"]), **options)
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "scores": [dict(zip(r["labels"], r["scores"], strict=True)) for r in results],
        "precision": precision,
        "note": note,
        "versions": versions(runtime),
    }


def onnxruntime_model(request: dict[str, Any]) -> tuple[Any, str, str]:
    """optimum's ONNX export of the model, or its dynamic int8 quantization."""
    from optimum.onnxruntime import ORTModelForSequenceClassification

    threads = request["threads"]
    work = Path(request["work_dir"])

    def export(out: Path) -> None:
        exported = ORTModelForSequenceClassification.from_pretrained(request["model"], export=True)
        exported.save_pretrained(out)

    float32_dir = prepared(work / "onnxruntime-float32", export)
    if request["variant"] == "float32":
        path, file_name, precision = float32_dir, ORT_FILE, "float32"
    elif request["variant"] == "int8":
        recipe = int8_recipe(cpu_flags())
        path = prepared(
            work / f"onnxruntime-int8-{recipe}", lambda out: quantize(float32_dir, out, recipe)
        )
        file_name = ORT_INT8_FILE
        scales = "per-channel" if PER_CHANNEL else "per-tensor"
        precision = f"int8 dynamic, {recipe} recipe, {scales}"
    else:
        raise ValueError(f"unknown onnxruntime variant {request['variant']!r}")
    model = ORTModelForSequenceClassification.from_pretrained(
        path,
        file_name=file_name,
        provider="CPUExecutionProvider",
        session_options=ort_session_options(threads),
    )
    return model, precision, f"{precision}, {threads} intra-op threads"


def quantize(float32_dir: Path, out: Path, recipe: str) -> None:
    """optimum's dynamic quantization of the exported model with `recipe`."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = getattr(AutoQuantizationConfig, recipe)(is_static=False, per_channel=PER_CHANNEL)
    ORTQuantizer.from_pretrained(float32_dir, file_name=ORT_FILE).quantize(
        save_dir=out, quantization_config=config
    )


def ort_session_options(threads: int) -> Any:
    """Sessions on `threads` intra-op threads (the worker's torch thread count), one inter-op."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def openvino_model(request: dict[str, Any]) -> tuple[Any, str, str]:
    """optimum-intel's OpenVINO model: default precision, or int8 weights."""
    from optimum.intel import OVModelForSequenceClassification, OVWeightQuantizationConfig

    threads = request["threads"]
    work = Path(request["work_dir"])
    variant = request["variant"]
    if variant == "default":
        options: dict[str, Any] = {}
    elif variant == "int8":
        options = {"quantization_config": OVWeightQuantizationConfig(bits=8)}
    else:
        raise ValueError(f"unknown openvino variant {variant!r}")

    def export(out: Path) -> None:
        exported = OVModelForSequenceClassification.from_pretrained(
            request["model"], export=True, compile=False, **options
        )
        exported.save_pretrained(out)

    path = prepared(work / f"openvino-{variant}", export)
    model = OVModelForSequenceClassification.from_pretrained(
        path, ov_config={"INFERENCE_NUM_THREADS": str(threads)}
    )
    # optimum-intel keeps the compiled model (or, in some versions, an infer request of it).
    compiled = model.request
    if hasattr(compiled, "get_compiled_model"):
        compiled = compiled.get_compiled_model()
    # An openvino Type: to_string() gives its short name ("bf16", "f32").
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    if variant == "int8":
        precision = f"int8 weights, {precision} inference"
    else:
        precision = f"{precision} inference"
    note = f"{precision}, {threads} threads"
    return model, precision, note


def run_int8_peak(request: dict[str, Any]) -> dict[str, Any]:
    """The best uint8 x int8 product ONNX Runtime's MatMulInteger reaches on `threads`."""
    import numpy as np
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rows, inputs, outputs = request["shape"]
    generator = np.random.default_rng(0)
    weights = generator.integers(-128, 128, (inputs, outputs), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [rows, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [rows, outputs])],
        initializer=[numpy_helper.from_array(weights, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = onnxruntime.InferenceSession(
        model.SerializeToString(),
        ort_session_options(request["threads"]),
        providers=["CPUExecutionProvider"],
    )
    feed = {"a": generator.integers(0, 256, (rows, inputs), dtype=np.uint8)}
    ops = OPS_PER_MAC * rows * inputs * outputs
    session.run(None, feed)  # warm-up: kernel choice, first-touch memory
    best, repeats = 0.0, 0
    deadline = time.perf_counter() + request["budget_s"]
    while repeats < PEAK_MIN_REPEATS or time.perf_counter() < deadline:
        started = time.perf_counter()
        session.run(None, feed)
        best = max(best, ops / (time.perf_counter() - started))
        repeats += 1
    return {
        "ops_per_s": best,
        "note": f"MatMulInteger {rows}x{inputs}x{outputs}, {request['threads']} threads",
        "versions": versions("onnxruntime"),
    }


def prepared(path: Path, build: Callable[[Path], None]) -> Path:
    """`path`, built by `build` unless an earlier request of the run built it.

    Built in a scratch directory and renamed into place, so an interrupted
    build never leaves a directory that looks complete.
    """
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        build(scratch)
        scratch.rename(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def cpu_flags() -> set[str]:
    """This CPU's flags (Linux); empty where /proc/cpuinfo cannot be read."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "flags:")
    return set(line.split(":", 1)[1].split())


def int8_recipe(flags: set[str]) -> str:
    """The best of optimum's quantization recipes this CPU's flags allow."""
    for recipe, flag in INT8_RECIPES:
        if flag in flags:
            return recipe
    return "arm64"


def versions(runtime: str) -> dict[str, str]:
    """The installed versions of the runtime's packages."""
    found = {}
    for name in VERSIONS[runtime]:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pipeline": run_pipeline,
    "int8_peak": run_int8_peak,
}

if __name__ == "__main__":
    sys.exit(main())
