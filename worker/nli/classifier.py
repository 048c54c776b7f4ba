"""The NLI zero-shot classifier: premise/hypothesis pairs through a transformers model.

`encode` turns an event into its premise/hypothesis pairs (worker.nli.pairs).
`classify_progressively` scores identical events once, cuts the pairs, sorted
by length, into forward batches under a padded token budget
(worker.nli.budget), and applies the pipeline's scoring math to each event's
logits as soon as they are all there; `classify` waits for every event.
"""

from __future__ import annotations

import functools
import gc
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from worker.errors import ConfigError, InferenceError, ModelError
from worker.nli import int8_calibration
from worker.nli.base import EncodedEvent, Scores, Task, in_order
from worker.nli.budget import (
    default_max_batch_tokens,
    default_min_batch_tokens,
    plan_batches,
    plan_event_batches,
)
from worker.nli.forward import (
    ATTENTION_MASK,
    INPUT_IDS,
    TOKEN_TYPE_IDS,
    Arrays,
    Forward,
    TorchForward,
    model_inputs,
)
from worker.nli.int8_calibration import RecordingForward
from worker.nli.labels import LabelIds, resolve_label_ids
from worker.nli.loading import load_model, resolve_device, resolve_dtype
from worker.nli.onnx_runtime import (
    FLOAT32,
    INT8,
    OnnxForward,
    export_cache,
    exported,
    runtime_errors,
)
from worker.nli.openvino_runtime import BFLOAT16, OpenVinoForward
from worker.nli.packed import pack_products
from worker.nli.pairs import PairEncoder, Pairs, pairs_of
from worker.nli.pooled import pool_last_layer
from worker.nli.precision import cpu_int8_flags
from worker.nli.relative import window_relative_attention

log = logging.getLogger(__name__)

CPU = torch.device("cpu")


class CpuRuntime(NamedTuple):
    """A runtime of the CPU's float32 export, in the precision it runs it."""

    name: str
    start: Callable[[Path, frozenset[str], str], Forward]
    """How it starts on the export: (path, input names, precision)."""
    precision: str


class NLIClassifier:
    """Zero-shot classification with an NLI model, scores equal to transformers' pipeline.

    `forward` runs the model (`config`'s) on padded batches; `max_batch_tokens`
    and `min_batch_tokens` shape the forward batches (see `plan_batches`); None
    takes the forward's device's default.
    """

    def __init__(
        self,
        model_name: str,
        tokenizer: PreTrainedTokenizerBase,
        config: PretrainedConfig,
        forward: Forward,
        max_batch_tokens: int | None = None,
        min_batch_tokens: int | None = None,
    ) -> None:
        if max_batch_tokens is not None and max_batch_tokens <= 0:
            raise ConfigError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
        self._model_name = model_name
        self._config = config
        self._forward_pass = forward
        self._label_ids: LabelIds = resolve_label_ids(config.label2id or {})
        self._num_labels = len(config.id2label or {})
        self._max_batch_tokens = max_batch_tokens or default_max_batch_tokens(forward.device)
        self._min_batch_tokens = min_batch_tokens or default_min_batch_tokens(forward.device)

        self._encoder = PairEncoder(model_name, tokenizer, config)

        # Padding is masked out; the id only has to be a real one, and not <eos>.
        pad_id = tokenizer.pad_token_id
        self._pad_id = int(pad_id if pad_id is not None else config.pad_token_id or 0)
        self._pad_type_id = int(tokenizer.pad_token_type_id)

    @classmethod
    def of_model(
        cls,
        model_name: str,
        tokenizer: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        max_batch_tokens: int | None = None,
        min_batch_tokens: int | None = None,
    ) -> NLIClassifier:
        """A classifier that runs a transformers model in torch."""
        forward = TorchForward(tokenizer, model)
        return cls(model_name, tokenizer, model.config, forward, max_batch_tokens, min_batch_tokens)

    @property
    def model_name(self) -> str:
        """The model id or directory, as reported in every output."""
        return self._model_name

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self._forward_pass.device

    @property
    def precision(self) -> str:
        """The precision the model computes in: float32, bfloat16, float16 or int8."""
        return self._forward_pass.precision

    @property
    def max_batch_tokens(self) -> int:
        """The padded-token budget of one forward batch."""
        return self._max_batch_tokens

    @property
    def label_ids(self) -> LabelIds:
        """The model's entailment and contradiction classes."""
        return self._label_ids

    @property
    def info(self) -> dict[str, str]:
        """What serves the scores: model, architecture, device, precision, runtime, forward
        budget."""
        return {
            "model": self._model_name,
            "architecture": str(self._config.model_type),
            "device": str(self.device),
            "precision": self.precision,
            "runtime": self._forward_pass.runtime,
            "max_batch_tokens": str(self._max_batch_tokens),
        }

    def encode(self, text: str, task: Task) -> EncodedEvent:
        """Tokenize `text` once for all of `task`'s hypotheses; cheap, no model call."""
        return self._encoder.encode(text, task)

    def classify(self, events: Sequence[EncodedEvent]) -> list[Scores]:
        """Score every event against its task; one `Scores` per event, in order."""
        return in_order(self.classify_progressively(events), len(events))

    def classify_progressively(
        self, events: Sequence[EncodedEvent]
    ) -> Iterator[list[tuple[int, Scores]]]:
        """Score every event against its task, yielding events as their last pair is scored.

        Each item holds the (index in `events`, scores) of the events the
        latest forward pass completed, possibly none; every index comes
        exactly once. Identical (text, task) events are scored once and come
        together.

        On the CPU one forward pass runs at a time, each event's pairs planned
        into one pass where they fit (`plan_event_batches`, shortest events
        first), and an event is yielded as soon as its pass is done: the rest
        of the micro-batch does not hold it back. On a GPU every pass is
        queued before any result is read, pairs sorted alone (`plan_batches`),
        and everything is yielded once: the host pads the next pass while the
        device runs this one and waits for the device once, not once per
        pass. Reading each pass back would leave the device idle while the
        host waits for it and pads the next one, and a micro-batch takes
        milliseconds there, so there is little to gain by releasing early.
        """
        # Identical (text, task) events are scored once and share the result.
        unique: dict[tuple[str, Task], EncodedEvent] = {}
        copies: dict[tuple[str, Task], list[int]] = {}
        for n, event in enumerate(events):
            key = (event.text, event.task)
            unique.setdefault(key, event)
            copies.setdefault(key, []).append(n)
        distinct = list(unique.values())
        indices = list(copies.values())

        pairs = [pairs_of(event) for event in distinct]
        rows = [(u, label) for u, event in enumerate(distinct) for label in range(event.pair_count)]
        logits = [np.empty((e.pair_count, self._num_labels), dtype=np.float32) for e in distinct]

        def scored(done: Sequence[int]) -> list[tuple[int, Scores]]:
            found = []
            for u in done:
                scores = distinct[u].score(logits[u], self._label_ids)
                found += [(n, scores) for n in indices[u]]
            return found

        lengths = [len(pairs[u].input_ids[label]) for u, label in rows]
        keys = [pairs[u].batch_keys[label] for u, label in rows]
        if self.device.type == "cuda":
            batches = plan_batches(lengths, keys, self._max_batch_tokens, self._min_batch_tokens)
        else:
            owners = [u for u, _ in rows]
            batches = plan_event_batches(
                lengths, keys, owners, self._max_batch_tokens, self._min_batch_tokens
            )
        batch_rows = [[rows[i] for i in batch] for batch in batches]

        if self.device.type == "cuda":
            with torch.inference_mode():
                queued = [self._forward(pairs, these) for these in batch_rows]
                gathered = self._gather(queued, len(rows))
            in_batch_order = (row for these in batch_rows for row in these)
            for (u, label), row_logits in zip(in_batch_order, gathered, strict=True):
                logits[u][label] = row_logits
            yield scored(range(len(distinct)))
            return

        unscored = [event.pair_count for event in distinct]
        if nothing_to_score := [u for u, count in enumerate(unscored) if count == 0]:
            yield scored(nothing_to_score)
        for these in batch_rows:
            with torch.inference_mode():
                batch_logits = self._gather([self._forward(pairs, these)], len(these))
            done = []
            for (u, label), row_logits in zip(these, batch_logits, strict=True):
                logits[u][label] = row_logits
                unscored[u] -= 1
                if unscored[u] == 0:
                    done.append(u)
            yield scored(done)

    def _forward(self, pairs: Sequence[Pairs], rows: Sequence[tuple[int, int]]) -> torch.Tensor:
        """Queue one batch of pairs, padded to its longest; its logits stay on the device.

        `rows` are (event, label) pairs: the label-th pair of `pairs[event]`.
        """
        input_ids = [pairs[u].input_ids[label] for u, label in rows]
        token_type_ids = [pairs[u].token_type_ids[label] for u, label in rows]
        width = max(len(ids) for ids in input_ids)
        # Right padding whatever the tokenizer's padding side: absolute position
        # embeddings (BART) number tokens from the left, padding or not.
        ids_array = np.full((len(input_ids), width), self._pad_id, dtype=np.int64)
        mask_array = np.zeros((len(input_ids), width), dtype=np.int64)
        types_array = np.full((len(input_ids), width), self._pad_type_id, dtype=np.int64)
        for row, (ids, types) in enumerate(zip(input_ids, token_type_ids, strict=True)):
            ids_array[row, : len(ids)] = ids
            mask_array[row, : len(ids)] = 1
            types_array[row, : len(ids)] = types
        arrays = {INPUT_IDS: ids_array, ATTENTION_MASK: mask_array}
        if TOKEN_TYPE_IDS in self._forward_pass.input_names:
            arrays[TOKEN_TYPE_IDS] = types_array
        try:
            logits = self._forward_pass(arrays)
        except (RuntimeError, ValueError, IndexError) as error:
            raise InferenceError(
                f"inference failed on a batch of {len(input_ids)} pairs of up to {width} tokens "
                f"on {self.device}: {type(error).__name__}: {error}"
            ) from None
        return logits

    def _gather(self, queued: list[torch.Tensor], pairs: int) -> npt.NDArray[np.float32]:
        """Wait for every queued batch and bring their logits to the host, rows in batch order."""
        if not queued:
            return np.empty((0, self._num_labels), dtype=np.float32)
        try:
            result: npt.NDArray[np.float32] = torch.cat(queued).float().cpu().numpy()
        except (RuntimeError, ValueError) as error:
            # Kernels run asynchronously on a GPU: a failure may only show here.
            raise InferenceError(
                f"inference failed on {pairs} pairs in {len(queued)} batches "
                f"on {self.device}: {type(error).__name__}: {error}"
            ) from None
        return result


def load_classifier(
    name: str, device: str = "auto", dtype: str = "auto", max_batch_tokens: int | None = None
) -> NLIClassifier:
    """Load model `name` (hub id or directory) and wrap it as a classifier.

    `device` is auto | cpu | cuda | cuda:N, `dtype` auto | float32 | bfloat16 |
    float16, or int8 (CPU only, opt-in); on a CPU, float32 runs in ONNX Runtime (see
    `onnx_runtime`), bfloat16 in OpenVINO (see `openvino_runtime`) and int8 in
    OpenVINO where the CPU has an int8 dot product, else in ONNX Runtime; each in
    torch where its runtime cannot run the model (int8 aside, which fails).
    `max_batch_tokens` None picks the device's default budget. Raises `ModelError` when the model
    cannot be loaded or is not an NLI model.
    """
    torch_device = resolve_device(device)
    int8 = dtype.strip().lower() == INT8
    if int8 and torch_device.type != "cpu":
        raise ModelError(
            f"dtype {INT8!r} is for the CPU only; on {torch_device} use 'bfloat16' or 'float16'"
        )
    torch_dtype = torch.float32 if int8 else resolve_dtype(dtype, torch_device)
    if torch_device.type == "cpu":
        return _exported(name, torch_dtype, int8, max_batch_tokens)
    tokenizer, model = load_model(name, torch_device, torch_dtype)
    return _in_torch(name, tokenizer, model, max_batch_tokens)


def _exported(
    name: str, dtype: torch.dtype, int8: bool, max_batch_tokens: int | None
) -> NLIClassifier:
    """On a CPU the model runs from its float32 ONNX export: float32 in ONNX Runtime
    (see worker.nli.onnx_runtime), bfloat16 in OpenVINO (see
    worker.nli.openvino_runtime), int8 in OpenVINO where the CPU has an int8 dot
    product and in ONNX Runtime elsewhere, or where OpenVINO cannot run the model.
    Where the model does not export or no runtime runs it, `dtype` runs in torch
    (int8 aside, which raises)."""
    tokenizer, model = load_model(name, CPU, torch.float32)
    # Exported with its last layer on the pooled row, as torch runs it (see _in_torch).
    pool_last_layer(model)
    config, input_names = model.config, model_inputs(tokenizer, model)
    try:
        with export_cache() as root:
            with runtime_errors(f"cannot export model {name!r} to ONNX"):
                path = exported(name, tokenizer, model, input_names, root)
            # The runtime reads its own copy of the weights: torch's go before it does,
            # or a start-up would hold both.
            del model
            gc.collect()
            calibration = functools.partial(
                _calibration_batches, name, tokenizer, config, input_names, max_batch_tokens
            )
            runtimes = _cpu_runtimes(dtype, int8, calibration)
            forward = _started(name, path, input_names, runtimes)
    except ModelError as error:
        if int8:
            raise ModelError(f"dtype {INT8!r} is not available: {error}") from None
        log.warning("%s; %s runs in torch instead", error, str(dtype).removeprefix("torch."))
        tokenizer, model = load_model(name, CPU, dtype)
        return _in_torch(name, tokenizer, model, max_batch_tokens)
    return NLIClassifier(name, tokenizer, config, forward, max_batch_tokens)


def _cpu_runtimes(
    dtype: torch.dtype, int8: bool, calibration: Callable[[], list[Arrays]]
) -> list[CpuRuntime]:
    """The runtimes that may run `dtype` (or int8, OpenVINO's calibrated on the batches
    `calibration` makes) from the float32 export, the first choice first."""
    onnx_int8 = CpuRuntime("ONNX Runtime", OnnxForward, INT8)
    if int8:

        def calibrated(path: Path, input_names: frozenset[str], precision: str) -> Forward:
            return OpenVinoForward(path, input_names, precision, calibration=calibration())

        openvino_int8 = CpuRuntime("OpenVINO", calibrated, INT8)
        return [openvino_int8, onnx_int8] if cpu_int8_flags() else [onnx_int8]
    if dtype == torch.bfloat16:
        return [CpuRuntime("OpenVINO", OpenVinoForward, BFLOAT16)]
    return [CpuRuntime("ONNX Runtime", OnnxForward, FLOAT32)]


def _calibration_batches(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    config: PretrainedConfig,
    input_names: frozenset[str],
    max_batch_tokens: int | None,
) -> list[Arrays]:
    """The forward batches static int8 is calibrated on (see worker.nli.int8_calibration),
    cut as this model's classifier cuts them."""
    recording = RecordingForward(input_names, len(config.id2label or {}))
    classifier = NLIClassifier(name, tokenizer, config, recording, max_batch_tokens)
    task = int8_calibration.TASK
    classifier.classify([classifier.encode(text, task) for text in int8_calibration.texts()])
    return recording.batches


def _started(
    name: str, path: Path, input_names: frozenset[str], runtimes: list[CpuRuntime]
) -> Forward:
    """The first of `runtimes` that runs the export at `path`; where one cannot, the next
    one does, and the last one's failure raises (a `ModelError` naming it)."""
    for runtime, fallback in itertools.pairwise(runtimes):
        try:
            return _start(name, path, input_names, runtime)
        except ModelError as error:
            log.warning("%s; %s runs in %s instead", error, runtime.precision, fallback.name)
    return _start(name, path, input_names, runtimes[-1])


def _start(name: str, path: Path, input_names: frozenset[str], runtime: CpuRuntime) -> Forward:
    """`runtime` running the export at `path`; a `ModelError` where it cannot."""
    started = time.perf_counter()
    with runtime_errors(f"cannot run model {name!r} in {runtime.name} ({runtime.precision})"):
        forward = runtime.start(path, input_names, runtime.precision)
    log.info(
        "%s in %s (%s) ready in %.1f s",
        name,
        runtime.name,
        runtime.precision,
        time.perf_counter() - started,
    )
    return forward


def _in_torch(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    max_batch_tokens: int | None,
) -> NLIClassifier:
    """A classifier running `model` in torch, on its device and in its dtype."""
    # The head reads one row of the last layer: only that row is computed (see pooled).
    pool_last_layer(model)
    if model.device.type == "cpu" and model.dtype == torch.bfloat16:
        pack_products(model)
    # DeBERTa's relative terms on the distances present (see relative); an ONNX
    # export keeps transformers' own, which it can trace.
    window_relative_attention(model)
    return NLIClassifier.of_model(name, tokenizer, model, max_batch_tokens)
