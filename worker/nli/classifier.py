"""The NLI zero-shot classifier: premise/hypothesis pairs through a transformers model.

`encode` tokenizes an event's text once and assembles its pairs with the
tokenizer's own post-processor, so every pair is exactly what
`tokenizer(premise, hypothesis, truncation="only_first")` gives, as in
transformers' zero-shot pipeline. `classify` scores identical events once,
sorts all pairs by length and cuts them into forward batches under a padded
token budget (as text-embeddings-inference does), then applies the pipeline's
scoring math to the gathered logits.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Encoding, Tokenizer
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from worker.errors import ConfigError, InferenceError, ModelError
from worker.nli.base import EncodedEvent, Scores, Task
from worker.nli.labels import LabelIds, resolve_label_ids
from worker.nli.loading import (
    INT8,
    load_model,
    precision_of,
    quantize_int8,
    resolve_device,
    resolve_dtype,
)

# Padded tokens per forward batch when the caller does not say. On a CPU the
# matrix products already run at full speed with a few thousand tokens, and
# bigger batches only add padding and memory.
CPU_MAX_BATCH_TOKENS = 4096
# A GPU needs many rows in flight. distilbart-mnli-12-3's shape in bfloat16 on
# an H200: 111k tokens/s at 8192, 298k at 32768, 344k at 65536 (2.0 GiB peak),
# 358k at 131072 (3.6 GiB); past 65536 memory grows faster than throughput.
# With batches queued without a wait each and the padding guard below, one
# H200 run (bench/gpu.sh, after a warm pass) gave 586k tokens/s at 16384.
CUDA_MAX_BATCH_TOKENS = 65536

# Padding is work thrown away, so a batch also closes before a pair this much
# shorter than its width, once it is big enough to run at full speed: from
# MIN_BATCH_TOKENS real tokens. On two AVX2 cores a 1024x4096 float32 product
# runs at ~70% of peak with 64 rows and ~90% from 256; 512 keeps clear of the
# slope. A GPU needs far more rows (see CUDA_MAX_BATCH_TOKENS).
MAX_PADDING = 0.1
CPU_MIN_BATCH_TOKENS = 512
CUDA_MIN_BATCH_TOKENS = 32768

# Tokenized hypotheses kept for reuse. A topic has a handful of labels, but
# events may bring their own, so the cache is bounded.
HYPOTHESIS_CACHE_SIZE = 4096

# transformers treats a model_max_length above this as "no limit" and then
# does not truncate at all (tokenization_utils_base.LARGE_INTEGER).
NO_LENGTH_LIMIT = 10**20

# Position ids of the RoBERTa family start after the padding index
# (pad_token_id + 1), so that many position embeddings are never usable.
POSITION_OFFSETS = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}


@dataclass(frozen=True, slots=True)
class _Pairs:
    """An event's model-ready pairs, kept in `EncodedEvent.premise`."""

    input_ids: tuple[list[int], ...]
    token_type_ids: tuple[list[int], ...]
    # Pairs whose keys differ never share a forward batch (see `_batch_key`).
    batch_keys: tuple[int, ...]


def default_max_batch_tokens(device: torch.device) -> int:
    """The padded-token budget per forward batch that suits `device`."""
    return CUDA_MAX_BATCH_TOKENS if device.type == "cuda" else CPU_MAX_BATCH_TOKENS


def default_min_batch_tokens(device: torch.device) -> int:
    """The real tokens from which a batch on `device` runs at full speed (see MAX_PADDING)."""
    return CUDA_MIN_BATCH_TOKENS if device.type == "cuda" else CPU_MIN_BATCH_TOKENS


def position_limit(config: PretrainedConfig) -> int | None:
    """The longest input the model's absolute position embeddings can take.

    None when positions are relative only (DeBERTa-v3), where length is not capped.
    """
    if getattr(config, "position_biased_input", True) is False:
        return None
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    return limit - POSITION_OFFSETS.get(config.model_type, 0)


def fit_pair(
    premise_len: int,
    hypothesis_len: int,
    special_tokens: int,
    max_length: int | None,
    hard_limit: int | None,
) -> tuple[int, int]:
    """How many premise and hypothesis tokens to keep so the pair fits.

    Up to `max_length` this is `tokenizers`' only_first truncation: the premise
    loses what the pair has too much, and when that would leave no premise the
    pipeline keeps the pair whole. Only a pair the model cannot take at all
    (over `hard_limit`) loses its premise and then the tail of its hypothesis.
    """
    total = premise_len + hypothesis_len + special_tokens
    if max_length is not None and total > max_length:
        excess = total - max_length
        if premise_len > excess:
            return premise_len - excess, hypothesis_len
    if hard_limit is None or total <= hard_limit:
        return premise_len, hypothesis_len
    room = max(hard_limit - special_tokens, 0)
    hypothesis_keep = min(hypothesis_len, room)
    return min(premise_len, room - hypothesis_keep), hypothesis_keep


def plan_batches(
    lengths: Sequence[int],
    keys: Sequence[int],
    max_batch_tokens: int,
    min_batch_tokens: int | None = None,
) -> list[list[int]]:
    """Cut pairs into forward batches whose padded size stays within the budget.

    Pairs are sorted longest first within each key, so a batch is padded to its
    first pair's length; a batch closes when one more pair would push
    `longest * count` past `max_batch_tokens`. Once it holds `min_batch_tokens`
    real tokens (None: never), it also closes before a pair more than
    MAX_PADDING shorter than its first. A pair longer than the budget gets a
    batch of its own. Returns the pairs' indices, batch by batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (keys[i], -lengths[i]))
    batches: list[list[int]] = []
    width = real = 0
    for i in order:
        current = batches[-1] if batches else None
        wasteful = (
            min_batch_tokens is not None
            and real >= min_batch_tokens
            and lengths[i] < width * (1 - MAX_PADDING)
        )
        if (
            current is not None
            and keys[current[0]] == keys[i]
            and width * (len(current) + 1) <= max_batch_tokens
            and not wasteful
        ):
            current.append(i)
            real += lengths[i]
        else:
            batches.append([i])
            width = real = lengths[i]
    return batches


class NLIClassifier:
    """Zero-shot classification with an NLI model, scores equal to transformers' pipeline.

    `max_batch_tokens` and `min_batch_tokens` shape the forward batches (see
    `plan_batches`); None takes the model's device's default.
    """

    def __init__(
        self,
        model_name: str,
        tokenizer: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        max_batch_tokens: int | None = None,
        min_batch_tokens: int | None = None,
    ) -> None:
        if max_batch_tokens is not None and max_batch_tokens <= 0:
            raise ConfigError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise ModelError(f"model {model_name!r} has no fast (tokenizers) tokenizer")
        config = model.config
        self._model_name = model_name
        self._model = model
        self._label_ids: LabelIds = resolve_label_ids(config.label2id or {})
        self._num_labels = len(config.id2label or {})
        self._max_batch_tokens = max_batch_tokens or default_max_batch_tokens(model.device)
        self._min_batch_tokens = min_batch_tokens or default_min_batch_tokens(model.device)

        # The loaded backend itself, not a copy: a JSON round trip can move
        # Unigram scores by an ulp and change how ties split a word (seen with
        # DeBERTa-v3 vocabularies), and then ids would differ from the pipeline's.
        # Calling the transformers tokenizer leaves truncation and padding on in
        # this backend, so this classifier must be the tokenizer's only user.
        self._tokenizer = backend
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        # Special tokens written in the text count as special, as in `tokenizer(...)`.
        self._tokenizer.encode_special_tokens = bool(tokenizer.split_special_tokens)
        self._post_processor = self._tokenizer.post_processor
        self._special_tokens = (
            self._post_processor.num_special_tokens_to_add(True) if self._post_processor else 0
        )
        self._truncation_side = tokenizer.truncation_side
        model_max_length = tokenizer.model_max_length
        self._hard_limit = position_limit(config)
        limits = [
            x
            for x in (self._hard_limit, model_max_length)
            if x is not None and x <= NO_LENGTH_LIMIT
        ]
        self._max_length = min(limits) if limits else None
        self._hypothesis = functools.lru_cache(maxsize=HYPOTHESIS_CACHE_SIZE)(self._encode_text)

        # Padding is masked out; the id only has to be a real one, and not <eos>.
        pad_id = tokenizer.pad_token_id
        self._pad_id = int(pad_id if pad_id is not None else config.pad_token_id or 0)
        self._pad_type_id = int(tokenizer.pad_token_type_id)
        eos_id = getattr(config, "eos_token_id", None)
        self._eos_id = eos_id if isinstance(eos_id, int) else None
        forward_args = inspect.signature(model.forward).parameters
        # Models with type_vocab_size 0 (DeBERTa-v3) ignore token types.
        self._uses_token_types = (
            "token_type_ids" in tokenizer.model_input_names
            and "token_type_ids" in forward_args
            and getattr(config, "type_vocab_size", 1) > 0
        )
        # The pipeline turns the decoder cache off for sequence classification.
        self._no_cache = {"use_cache": False} if "use_cache" in forward_args else {}

    @property
    def model_name(self) -> str:
        """The model id or directory, as reported in every output."""
        return self._model_name

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self._model.device

    @property
    def dtype(self) -> torch.dtype:
        """The precision of the model's weights."""
        return self._model.dtype

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
        """What serves the scores: model, architecture, device, precision, forward budget."""
        return {
            "model": self._model_name,
            "architecture": str(self._model.config.model_type),
            "device": str(self.device),
            "precision": precision_of(self._model),
            "max_batch_tokens": str(self._max_batch_tokens),
        }

    def _encode_text(self, text: str) -> Encoding:
        return self._tokenizer.encode(text, add_special_tokens=False)

    def _batch_key(self, input_ids: list[int]) -> int:
        # BART-family heads pool the last <eos> and refuse batches whose rows
        # hold different numbers of <eos> (a text with a literal "</s>").
        return input_ids.count(self._eos_id) if self._eos_id is not None else 0

    def _truncated(self, encoding: Encoding, keep: int) -> Encoding:
        if keep == len(encoding):
            return encoding
        # `truncate` works in place, and the untruncated one is shared.
        copy = Encoding.merge([encoding], growing_offsets=False)
        copy.truncate(keep, stride=0, direction=self._truncation_side)
        return copy

    def _pair(self, premise: Encoding, hypothesis: Encoding) -> Encoding:
        premise_keep, hypothesis_keep = fit_pair(
            len(premise), len(hypothesis), self._special_tokens, self._max_length, self._hard_limit
        )
        first = self._truncated(premise, premise_keep)
        second = self._truncated(hypothesis, hypothesis_keep)
        if self._post_processor is None:
            return Encoding.merge([first, second], growing_offsets=False)
        return self._post_processor.process(first, second, True)

    def encode(self, text: str, task: Task) -> EncodedEvent:
        """Tokenize `text` once for all of `task`'s hypotheses; cheap, no model call."""
        premise = self._encode_text(text)
        pairs = [self._pair(premise, self._hypothesis(h)) for h in task.hypotheses()]
        input_ids = tuple(pair.ids for pair in pairs)
        encoded = _Pairs(
            input_ids=input_ids,
            token_type_ids=tuple(pair.type_ids for pair in pairs),
            batch_keys=tuple(self._batch_key(ids) for ids in input_ids),
        )
        return EncodedEvent(
            text=text, task=task, premise=encoded, pair_tokens=tuple(len(ids) for ids in input_ids)
        )

    def classify(self, events: Sequence[EncodedEvent]) -> list[Scores]:
        """Score every event against its task; one `Scores` per event, in order."""
        # Identical (text, task) events are scored once and share the result.
        unique: dict[tuple[str, Task], EncodedEvent] = {}
        for event in events:
            unique.setdefault((event.text, event.task), event)
        position = {key: u for u, key in enumerate(unique)}
        distinct = list(unique.values())

        pairs = [_pairs_of(event) for event in distinct]
        rows = [(u, label) for u, event in enumerate(distinct) for label in range(event.pair_count)]
        logits = [np.empty((e.pair_count, self._num_labels), dtype=np.float32) for e in distinct]
        batches = plan_batches(
            [len(pairs[u].input_ids[label]) for u, label in rows],
            [pairs[u].batch_keys[label] for u, label in rows],
            self._max_batch_tokens,
            self._min_batch_tokens,
        )
        batch_rows = [[rows[i] for i in batch] for batch in batches]
        with torch.inference_mode():
            # Every batch is queued before any result is read: on a GPU the host
            # pads the next batch while the device runs this one, and the call
            # waits for the device once, not once per batch.
            queued = [
                self._forward(
                    [pairs[u].input_ids[label] for u, label in these],
                    [pairs[u].token_type_ids[label] for u, label in these],
                )
                for these in batch_rows
            ]
            gathered = self._gather(queued, len(rows))
        in_batch_order = (row for these in batch_rows for row in these)
        for (u, label), row_logits in zip(in_batch_order, gathered, strict=True):
            logits[u][label] = row_logits

        scores = [e.task.score(lg, self._label_ids) for lg, e in zip(logits, distinct, strict=True)]
        return [scores[position[(e.text, e.task)]] for e in events]

    def _forward(self, input_ids: list[list[int]], token_type_ids: list[list[int]]) -> torch.Tensor:
        """Queue one batch of pairs, padded to its longest; its logits stay on the device."""
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
        arrays = {"input_ids": ids_array, "attention_mask": mask_array}
        if self._uses_token_types:
            arrays["token_type_ids"] = types_array
        try:
            inputs = {name: self._to_device(a) for name, a in arrays.items()}
            logits: torch.Tensor = self._model(**inputs, **self._no_cache).logits
        except (RuntimeError, ValueError, IndexError) as error:
            raise InferenceError(
                f"inference failed on a batch of {len(input_ids)} pairs of up to {width} tokens "
                f"on {self.device}: {type(error).__name__}: {error}"
            ) from None
        return logits

    def _to_device(self, array: npt.NDArray[np.int64]) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type != "cuda":
            return tensor
        # From page-locked memory the copy is asynchronous: the host goes on padding.
        return tensor.pin_memory().to(self.device, non_blocking=True)

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


def _pairs_of(event: EncodedEvent) -> _Pairs:
    if not isinstance(event.premise, _Pairs):
        raise InferenceError("the event was not encoded by an NLIClassifier")
    return event.premise


def load_classifier(
    name: str, device: str = "auto", dtype: str = "auto", max_batch_tokens: int | None = None
) -> NLIClassifier:
    """Load model `name` (hub id or directory) and wrap it as a classifier.

    `device` is auto | cpu | cuda | cuda:N, `dtype` auto | float32 | bfloat16 |
    float16, or int8 (CPU only, opt-in: see `loading.INT8`); `max_batch_tokens`
    None picks the device's default budget. Raises `ModelError` when the model
    cannot be loaded or is not an NLI model.
    """
    torch_device = resolve_device(device)
    if dtype.strip().lower() != INT8:
        loaded = load_model(name, torch_device, resolve_dtype(dtype, torch_device))
        return NLIClassifier(name, loaded.tokenizer, loaded.model, max_batch_tokens)
    if torch_device.type != "cpu":
        raise ModelError(
            f"dtype {INT8!r} is for the CPU only; on {torch_device} use 'bfloat16' or 'float16'"
        )
    loaded = load_model(name, torch_device, torch.float32)
    return NLIClassifier(name, loaded.tokenizer, quantize_int8(loaded.model), max_batch_tokens)
