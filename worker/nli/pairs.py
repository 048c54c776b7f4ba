"""Premise/hypothesis pairs, tokenized exactly as transformers' zero-shot pipeline does.

An event's text is tokenized once; each hypothesis once per distinct text (a
bounded cache), and every pair is assembled with the tokenizer's own
post-processor, so it is exactly what `tokenizer(premise, hypothesis,
truncation="only_first")` gives. A text its task chunks (worker.nli.chunks)
is cut into premise token windows first, each paired the same way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from worker.errors import InferenceError, ModelError
from worker.nli.base import EncodedEvent, Task
from worker.nli.chunks import Chunking, TokenRange, plan_chunks

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
class Pairs:
    """An event's model-ready pairs, kept in `EncodedEvent.pairs`."""

    input_ids: tuple[list[int], ...]
    token_type_ids: tuple[list[int], ...]
    # Pairs whose keys differ never share a forward batch (see `_batch_key`).
    batch_keys: tuple[int, ...]


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


class PairEncoder:
    """Turns an event's text and task into its model-ready pairs."""

    def __init__(
        self, model_name: str, tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig
    ) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise ModelError(f"model {model_name!r} has no fast (tokenizers) tokenizer")
        # The loaded backend itself, not a copy: a JSON round trip can move
        # Unigram scores by an ulp and change how ties split a word (seen with
        # DeBERTa-v3 vocabularies), and then ids would differ from the pipeline's.
        # Calling the transformers tokenizer leaves truncation and padding on in
        # this backend, so this encoder must be the tokenizer's only user.
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
        eos_id = getattr(config, "eos_token_id", None)
        self._eos_id = eos_id if isinstance(eos_id, int) else None

    def encode(self, text: str, task: Task) -> EncodedEvent:
        """Tokenize `text` once for all of `task`'s hypotheses; cheap, no model call.

        Raises `TooManyChunksError` when the task chunks long texts and this
        one needs more than its `max_chunks`.
        """
        premise = self._encode_text(text)
        hypotheses = [self._hypothesis(h) for h in task.hypotheses()]
        chunks = self._chunks(len(premise), hypotheses, task.long_text)
        premises = self._windows(premise, chunks) if chunks else [premise]
        encodings = [self._pair(p, h) for p in premises for h in hypotheses]
        input_ids = tuple(pair.ids for pair in encodings)
        pairs = Pairs(
            input_ids=input_ids,
            token_type_ids=tuple(pair.type_ids for pair in encodings),
            batch_keys=tuple(self._batch_key(ids) for ids in input_ids),
        )
        return EncodedEvent(
            text=text,
            task=task,
            pairs=pairs,
            pair_tokens=tuple(len(ids) for ids in input_ids),
            chunks=chunks,
        )

    def _chunks(
        self, premise_len: int, hypotheses: list[Encoding], long_text: Chunking | None
    ) -> tuple[TokenRange, ...]:
        if long_text is None or self._max_length is None or not hypotheses:
            return ()
        longest = max(len(h) for h in hypotheses)
        room = self._max_length - self._special_tokens - longest
        return plan_chunks(premise_len, room, long_text)

    def _windows(self, premise: Encoding, chunks: tuple[TokenRange, ...]) -> list[Encoding]:
        """The premise cut at `chunks`, which `windows` made: each chunk its own encoding."""
        start, end = chunks[0]
        width = end - start
        stride = width - chunks[1][0] if len(chunks) > 1 else 0
        # tokenizers cuts an encoding into exactly these windows: the kept part
        # is the first, the overflowing ones follow. Checked, not assumed.
        copy = Encoding.merge([premise], growing_offsets=False)
        copy.truncate(width, stride=stride, direction="right")
        parts = [copy, *copy.overflowing]
        ids = premise.ids
        if len(parts) != len(chunks) or any(
            part.ids != ids[a:b] for part, (a, b) in zip(parts, chunks, strict=False)
        ):
            raise InferenceError("the tokenizer cut the premise into other windows than asked")
        return parts

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


def pairs_of(event: EncodedEvent) -> Pairs:
    """The pairs a `PairEncoder` made of the event."""
    if not isinstance(event.pairs, Pairs):
        raise InferenceError("the event was not encoded by an NLIClassifier")
    return event.pairs
