"""NLIClassifier's pair building, batching, dedupe and errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoConfig, BartConfig, DebertaV2Config, RobertaConfig

from tests.conftest import TinyModelFactory
from tests.models import CONTRADICTION_NEUTRAL_ENTAILMENT, NOT_NLI, TINY_DEBERTA
from tests.texts import fortunes
from worker.errors import ConfigError, InferenceError, ModelError
from worker.nli.base import Scores, Task
from worker.nli.budget import CPU_MAX_BATCH_TOKENS, plan_batches, plan_event_batches
from worker.nli.classifier import NLIClassifier, load_classifier
from worker.nli.fake import FakeClassifier
from worker.nli.loading import LoadedModel, load_model
from worker.nli.pairs import fit_pair, position_limit

TOLERANCE = 1e-5
TOPICS = Task(("computers", "food", "love", "science"), "This example is {}.", multi_label=False)
TAGS = Task(("politics", "sports", "law"), "The topic of this text is {}.", multi_label=True)


@pytest.fixture(scope="module")
def loaded_bart(tiny_bart_dir: Path) -> LoadedModel:
    return load_model(str(tiny_bart_dir), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def bart(tiny_bart_dir: Path, loaded_bart: LoadedModel) -> NLIClassifier:
    return NLIClassifier.of_model(str(tiny_bart_dir), loaded_bart.tokenizer, loaded_bart.model)


@pytest.fixture
def batch_shapes(loaded_bart: LoadedModel) -> Iterator[list[tuple[int, int]]]:
    """The (rows, width) of every forward batch the BART model runs."""
    shapes: list[tuple[int, int]] = []
    model = loaded_bart.model
    handle = model.register_forward_pre_hook(
        lambda _module, _args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    yield shapes
    handle.remove()


# fit_pair: only_first truncation as tokenizers does it, then the model's hard limit.


def test_pairs_within_the_limit_are_kept_whole() -> None:
    assert fit_pair(10, 5, 4, max_length=19, hard_limit=1024) == (10, 5)


def test_the_premise_loses_what_the_pair_has_too_much() -> None:
    assert fit_pair(100, 5, 4, max_length=64, hard_limit=1024) == (55, 5)


def test_a_premise_too_short_to_truncate_keeps_the_pair_whole_like_the_pipeline() -> None:
    assert fit_pair(3, 70, 4, max_length=64, hard_limit=1024) == (3, 70)
    # Exactly as short as the excess: tokenizers refuses too (nothing would be left).
    assert fit_pair(13, 60, 4, max_length=64, hard_limit=1024) == (13, 60)


def test_a_pair_over_the_hard_limit_loses_its_premise_then_its_hypothesis_tail() -> None:
    assert fit_pair(3, 70, 4, max_length=64, hard_limit=64) == (0, 60)
    assert fit_pair(10, 40, 4, max_length=None, hard_limit=30) == (0, 26)


def test_no_limits_no_truncation() -> None:
    assert fit_pair(100_000, 5, 4, max_length=None, hard_limit=None) == (100_000, 5)


# position_limit: absolute position embeddings cap the input, relative ones do not.


def test_bart_takes_max_position_embeddings() -> None:
    assert position_limit(BartConfig(max_position_embeddings=1024)) == 1024


def test_roberta_loses_its_padding_offset() -> None:
    assert position_limit(RobertaConfig(max_position_embeddings=514)) == 512


def test_deberta_v3_positions_are_relative() -> None:
    assert position_limit(DebertaV2Config(**TINY_DEBERTA)) is None
    bert = AutoConfig.for_model("bert", position_embedding_type="relative_key")
    assert position_limit(bert) is None


# plan_batches: the padded size of a batch stays within the budget.


@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=60),
    budget=st.integers(1, 4000),
    data=st.data(),
)
def test_batches_cover_every_pair_once_within_the_budget(
    lengths: list[int], budget: int, data: st.DataObject
) -> None:
    keys = data.draw(st.lists(st.integers(0, 2), min_size=len(lengths), max_size=len(lengths)))
    batches = plan_batches(lengths, keys, budget)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len({keys[i] for i in batch}) == 1
        padded = max(lengths[i] for i in batch) * len(batch)
        assert padded <= budget or len(batch) == 1


def test_pairs_are_grouped_by_length() -> None:
    lengths = [5, 100, 6, 99, 7, 98]
    assert plan_batches(lengths, [0] * 6, max_batch_tokens=300) == [[1, 3, 5], [4, 2, 0]]


@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=60),
    budget=st.integers(1, 4000),
    min_tokens=st.none() | st.integers(1, 1000),
    data=st.data(),
)
def test_event_batches_cover_every_pair_once_and_keep_events_that_fit_whole(
    lengths: list[int], budget: int, min_tokens: int | None, data: st.DataObject
) -> None:
    size = len(lengths)
    keys = data.draw(st.lists(st.integers(0, 2), min_size=size, max_size=size))
    events = data.draw(st.lists(st.integers(0, 5), min_size=size, max_size=size))
    batches = plan_event_batches(lengths, keys, events, budget, min_tokens)
    assert sorted(i for batch in batches for i in batch) == list(range(size))
    for batch in batches:
        assert len({keys[i] for i in batch}) == 1
        assert max(lengths[i] for i in batch) * len(batch) <= budget or len(batch) == 1
    for unit in {(keys[i], events[i]) for i in range(size)}:
        pairs = [i for i in range(size) if (keys[i], events[i]) == unit]
        if max(lengths[i] for i in pairs) * len(pairs) <= budget:
            assert sum(any(i in batch for i in pairs) for batch in batches) == 1, unit


def test_event_batches_keep_events_whole_and_run_the_shortest_first() -> None:
    lengths = [5, 100, 6, 99, 7, 98]
    events = [0, 1, 0, 1, 2, 2]
    batches = plan_event_batches(lengths, [0] * 6, events, max_batch_tokens=300)
    assert batches == [[2, 0], [5, 4], [1, 3]]


def test_event_batches_pad_about_as_little_as_sorted_pairs(bart: NLIClassifier) -> None:
    encoded = [bart.encode(t, TOPICS) for t in fortunes(32)]
    lengths = [n for event in encoded for n in event.pair_tokens]
    events = [e for e, event in enumerate(encoded) for _ in event.pair_tokens]

    def padded(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)

    for budget in (1024, 4096):
        pairs = plan_batches(lengths, [0] * len(lengths), budget, 512)
        whole = plan_event_batches(lengths, [0] * len(lengths), events, budget, 512)
        assert padded(whole) <= 1.03 * padded(pairs), budget


# encode / classify


def test_pair_tokens_are_the_model_input_lengths(bart: NLIClassifier) -> None:
    event = bart.encode("The cat sat on the mat.", TOPICS)
    # <s> premise </s></s> hypothesis </s>
    assert event.pair_count == len(TOPICS.labels)
    assert event.pair_tokens == tuple(len(ids) for ids in event.pairs.input_ids)  # type: ignore[attr-defined]
    assert min(event.pair_tokens) == 7 + 5 + 4


def test_no_events_no_scores(bart: NLIClassifier) -> None:
    assert bart.classify([]) == []


def test_identical_events_are_scored_once(
    bart: NLIClassifier, batch_shapes: list[tuple[int, int]]
) -> None:
    texts = fortunes(3, max_chars=400)
    events = [bart.encode(t, TOPICS) for t in texts]
    duplicates = [events[0], events[1], events[0], bart.encode(texts[0], TOPICS), events[2]]
    scores = bart.classify(duplicates)
    assert sum(rows for rows, _ in batch_shapes) == 3 * len(TOPICS.labels)
    assert scores[0] == scores[2] == scores[3]
    alone = bart.classify(events)
    assert [scores[0], scores[1], scores[4]] == alone


def test_the_same_text_with_another_task_is_scored_separately(bart: NLIClassifier) -> None:
    text = fortunes(1)[0]
    single, multi = bart.classify([bart.encode(text, TOPICS), bart.encode(text, TAGS)])
    assert sum(single.scores) == pytest.approx(1.0)
    assert len(multi.scores) == len(TAGS.labels)


@pytest.mark.parametrize("budget", [1, 64, 300, 1000, CPU_MAX_BATCH_TOKENS, 1_000_000])
def test_scores_do_not_depend_on_the_token_budget(
    bart: NLIClassifier, loaded_bart: LoadedModel, batch_shapes: list[tuple[int, int]], budget: int
) -> None:
    events = [bart.encode(t, TAGS if i % 2 else TOPICS) for i, t in enumerate(fortunes(12))]
    reference = bart.classify(events)
    batch_shapes.clear()
    budgeted = NLIClassifier.of_model(
        bart.model_name, loaded_bart.tokenizer, loaded_bart.model, budget
    )
    scores = budgeted.classify(events)
    for got, expected in zip(scores, reference, strict=True):
        np.testing.assert_allclose(got.scores, expected.scores, atol=TOLERANCE)
    assert all(rows * width <= budget or rows == 1 for rows, width in batch_shapes)
    if budget == 1:
        assert len(batch_shapes) == sum(e.pair_count for e in events)


def test_events_are_yielded_as_their_forward_pass_ends_with_the_same_scores(
    bart: NLIClassifier, loaded_bart: LoadedModel, batch_shapes: list[tuple[int, int]]
) -> None:
    texts = fortunes(8, max_chars=400)
    events = [bart.encode(t, TOPICS) for t in texts]
    events.insert(3, bart.encode(texts[5], TOPICS))  # a duplicate comes with its original
    reference = bart.classify(events)
    batch_shapes.clear()
    small = NLIClassifier.of_model(bart.model_name, loaded_bart.tokenizer, loaded_bart.model, 600)
    passes_before: list[int] = []
    found: dict[int, Scores] = {}
    for part in small.classify_progressively(events):
        passes_before.append(len(batch_shapes))
        for n, scores in part:
            assert n not in found, "every event once"
            found[n] = scores
        assert (3 in found) == (6 in found), "a duplicate and its original together"
    assert sorted(found) == list(range(len(events)))
    assert passes_before == list(range(1, len(batch_shapes) + 1)), "one item per pass"
    assert len(batch_shapes) > 2
    for n, expected in enumerate(reference):
        np.testing.assert_allclose(found[n].scores, expected.scores, atol=TOLERANCE)
    assert small.classify(events) == [found[n] for n in range(len(events))]


def test_on_a_gpu_every_pass_is_queued_and_everything_comes_at_once(
    bart: NLIClassifier,
    loaded_bart: LoadedModel,
    batch_shapes: list[tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = [bart.encode(t, TOPICS) for t in fortunes(8, max_chars=400)]
    reference = bart.classify(events)
    batch_shapes.clear()
    small = NLIClassifier.of_model(bart.model_name, loaded_bart.tokenizer, loaded_bart.model, 600)
    # The CUDA path, run on the CPU: the classifier plans for a GPU, the forward
    # (on its own device) keeps the tensors where they are.
    monkeypatch.setattr(NLIClassifier, "device", property(lambda _self: torch.device("cuda")))
    parts = list(small.classify_progressively(events))
    assert len(parts) == 1 and sorted(n for n, _ in parts[0]) == list(range(len(events)))
    lengths = [n for event in events for n in event.pair_tokens]
    assert len(batch_shapes) == len(plan_batches(lengths, [0] * len(lengths), 600, 512)) > 2
    for (_, got), expected in zip(sorted(parts[0], key=lambda p: p[0]), reference, strict=True):
        np.testing.assert_allclose(got.scores, expected.scores, atol=TOLERANCE)


def test_a_literal_eos_in_the_text_batches_apart(
    bart: NLIClassifier, batch_shapes: list[tuple[int, int]]
) -> None:
    # BART pools the last </s> and refuses rows with different </s> counts.
    events = [bart.encode(t, TOPICS) for t in ["plain text", "text with a </s> inside", "more"]]
    assert len(bart.classify(events)) == 3
    assert len(batch_shapes) == 2


def test_the_default_budget_suits_the_cpu(bart: NLIClassifier) -> None:
    assert bart.max_batch_tokens == CPU_MAX_BATCH_TOKENS


def test_a_budget_must_be_positive(tiny_bart_dir: Path) -> None:
    with pytest.raises(ConfigError, match="positive"):
        load_classifier(str(tiny_bart_dir), device="cpu", max_batch_tokens=0)


def test_model_failures_become_inference_errors(
    bart: NLIClassifier, loaded_bart: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(**_inputs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    event = bart.encode("text", TOPICS)
    monkeypatch.setattr(loaded_bart.model, "forward", out_of_memory)
    with pytest.raises(InferenceError, match=r"4 pairs.*CUDA out of memory"):
        bart.classify([event])


def test_events_from_another_classifier_are_refused(bart: NLIClassifier) -> None:
    event = FakeClassifier().encode("text", TOPICS)
    with pytest.raises(InferenceError, match="not encoded by an NLIClassifier"):
        bart.classify([event])


def test_a_model_without_entailment_is_refused_at_load(
    tiny_model_factory: TinyModelFactory,
) -> None:
    path = tiny_model_factory("deberta", NOT_NLI)
    with pytest.raises(ModelError, match="'negative'"):
        load_classifier(str(path), device="cpu")


def test_the_classifier_reports_its_model(bart: NLIClassifier, tiny_bart_dir: Path) -> None:
    assert bart.model_name == str(tiny_bart_dir)
    assert bart.device == torch.device("cpu")
    assert bart.precision == "float32"
    assert bart.label_ids.entailment_id == 2
    assert CONTRADICTION_NEUTRAL_ENTAILMENT[bart.label_ids.contradiction_id] == "contradiction"
