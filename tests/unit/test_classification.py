"""The classification object: ranking, predictions, thresholds, groups, logits; routes."""

from __future__ import annotations

import orjson

from config.topics import TopicSettings
from schemas import Classification
from worker.classification import classification_of
from worker.nli.base import Scores
from worker.nli.chunks import Aggregate, Chunking, ChunkScores
from worker.nli.labels import LabelIds
from worker.routing import Route

IDS = LabelIds(entailment_id=2, contradiction_id=0)


def make(scores: list[float], multi_label: bool, threshold: float = 0.5, **topic: object) -> dict:
    route = Route.from_settings(
        TopicSettings(
            input="posts",
            output="out",
            labels=["a", "b", "c"],
            hypothesis_template="T {}.",
            multi_label=multi_label,
            threshold=threshold,
            **topic,
        )
    )
    return classification_of(
        route,
        route.task,
        Scores(tuple(scores)),
        model="m",
        label_ids=IDS,
        source=("posts", 2, 41),
    )


def test_classification_sorts_labels_and_predicts_top_one_in_single_label_mode() -> None:
    result = make([0.2, 0.7, 0.1], multi_label=False)
    assert result["labels"] == ["b", "a", "c"]
    assert result["scores"] == [0.7, 0.2, 0.1]
    assert result["predicted"] == ["b"]
    assert result["hypothesis_template"] == "T {}."
    assert result["source"] == {"topic": "posts", "partition": 2, "offset": 41}
    assert "groups" not in result and "logits" not in result


def test_multi_label_predicts_every_label_over_the_threshold() -> None:
    assert make([0.6, 0.9, 0.5], multi_label=True)["predicted"] == ["b", "a", "c"]
    assert make([0.6, 0.9, 0.5], multi_label=True, threshold=0.95)["predicted"] == []


def test_calibrated_thresholds_override_the_topic_threshold() -> None:
    result = make(
        [0.6, 0.9, 0.5], multi_label=True, calibration={"thresholds": {"b": 0.95, "c": 0.4}}
    )
    assert result["predicted"] == ["a", "c"]


def test_groups_and_logits_appear_in_the_output() -> None:
    route = Route.from_settings(
        TopicSettings(
            input="posts",
            output="out",
            labels=["a", {"name": "b", "hypothesis": "Own b."}],
            hypothesis_template=["T {}.", "U {}."],
            multi_label=True,
            label_groups={"mood": {"labels": ["x", "y"], "multi_label": False}},
            include_logits=True,
        )
    )
    task = route.task
    assert task.hypotheses() == ("T a.", "U a.", "Own b.", "T x.", "U x.", "T y.", "U y.")
    logits = tuple((float(i), 0.0, float(10 + i)) for i in range(len(task.hypotheses())))
    scores = Scores((0.3, 0.8), groups=((0.25, 0.75),), logits=logits)
    result = classification_of(
        route, task, scores, model="m", label_ids=IDS, source=("posts", 0, 1)
    )
    assert result["hypothesis_template"] == ["T {}.", "U {}."]
    assert result["groups"] == {
        "mood": {"labels": ["y", "x"], "scores": [0.75, 0.25], "predicted": ["y"]}
    }
    assert result["logits"]["a"] == {"entailment": [10.0, 11.0], "contradiction": [0.0, 1.0]}
    assert result["logits"]["b"] == {"entailment": [12.0, 12.0], "contradiction": [2.0, 2.0]}
    assert result["logits"]["y"]["entailment"] == [15.0, 16.0]


def chunked_route(aggregate: str) -> Route:
    return Route.from_settings(
        TopicSettings(
            input="posts",
            output="out",
            labels=["a", "b"],
            label_groups={"mood": {"labels": ["x", "y"]}},
            long_text={"strategy": "chunk", "window": 40, "stride": 8, "aggregate": aggregate},
        )
    )


def test_a_chunked_topics_task_carries_its_long_text_settings() -> None:
    assert chunked_route("mean").task.long_text == Chunking(40, 8, Aggregate.MEAN, 16)
    assert make([0.1, 0.2, 0.7], multi_label=False)["labels"], "truncate: no chunking"
    plain = TopicSettings(input="p", output="o", labels=["a"])
    assert Route.from_settings(plain).task.long_text is None


def test_with_max_the_output_names_the_chunk_that_gave_each_score() -> None:
    route = chunked_route("max")
    windows = ((0, 40), (32, 72), (64, 90))
    chunks = ChunkScores(windows, Aggregate.MAX, best=(2, 0), group_best=((1, 1),))
    scores = Scores((0.3, 0.8), groups=((0.6, 0.5),), chunks=chunks)
    result = classification_of(
        route, route.task, scores, model="m", label_ids=IDS, source=("posts", 0, 1)
    )
    assert orjson.loads(orjson.dumps(result["chunks"])) == {
        "count": 3,
        "aggregate": "max",
        "token_ranges": {"a": [64, 90], "b": [0, 40]},
        "groups": {"mood": {"x": [32, 72], "y": [32, 72]}},
    }
    # The documented schema of `classification.chunks` takes it (groups are outside it).
    documented = orjson.loads(orjson.dumps(result))
    del documented["groups"]
    assert Classification.model_validate(documented).chunks is not None


def test_with_mean_the_output_has_the_chunk_count_only() -> None:
    route = chunked_route("mean")
    chunks = ChunkScores(((0, 40), (32, 50)), Aggregate.MEAN, group_best=((),))
    scores = Scores((0.3, 0.8), groups=((0.6, 0.4),), chunks=chunks)
    result = classification_of(
        route, route.task, scores, model="m", label_ids=IDS, source=("posts", 0, 1)
    )
    assert result["chunks"] == {"count": 2, "aggregate": "mean"}
    assert "chunks" not in make([0.1, 0.2, 0.7], multi_label=False), "scored whole"


def test_routes_match_by_label_score_or_when_no_label_is_high() -> None:
    route = Route.from_settings(
        TopicSettings(
            input="posts",
            output="out",
            labels=["politics", "sports"],
            routes=[
                {"label": "politics", "min_score": 0.5, "topic": "flagged"},
                {"none_above": 0.3, "topic": "review"},
            ],
        )
    )
    assert route.destinations({"politics": 0.5, "sports": 0.1}) == ["flagged"]
    assert route.destinations({"politics": 0.2, "sports": 0.29}) == ["review"]
    assert route.destinations({"politics": 0.2, "sports": 0.9}) == []
