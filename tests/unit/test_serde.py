"""Decoding input records (and the reasons for dead-lettering), encoding outputs."""

from __future__ import annotations

import orjson
import pytest

from config.settings import TopicSettings
from schemas import OutputEvent
from worker import serde
from worker.nli.base import Scores
from worker.nli.labels import LabelIds
from worker.routing import Route

ROUTE = Route.from_settings(
    TopicSettings(input="posts", output="out", labels=["a", "b"], max_text_chars=20)
)
OWN_LABELS = Route.from_settings(
    TopicSettings(input="posts", output="out", labels=["a"], allow_event_labels=True)
)


def test_decodes_a_valid_event_and_keeps_every_field() -> None:
    event = serde.decode_event(b'{"id": 7, "text": "hello", "extra": [1, 2]}', ROUTE)
    assert isinstance(event, serde.DecodedEvent)
    assert event.text == "hello" and event.labels is None
    assert event.body == {"id": 7, "text": "hello", "extra": [1, 2]}


@pytest.mark.parametrize(
    ("value", "error_type"),
    [
        (None, serde.EMPTY_VALUE),
        (b"", serde.EMPTY_VALUE),
        (b"\xff\xfe{}", serde.INVALID_UTF8),
        (b'{"text": "caf\xe9"}', serde.INVALID_UTF8),
        (b"{not json", serde.INVALID_JSON),
        (b"[1, 2]", serde.NOT_AN_OBJECT),
        (b'"text"', serde.NOT_AN_OBJECT),
        (b'{"body": "x"}', serde.MISSING_TEXT),
        (b'{"text": ""}', serde.INVALID_TEXT),
        (b'{"text": "   "}', serde.INVALID_TEXT),
        (b'{"text": 5}', serde.INVALID_TEXT),
        (b'{"text": null}', serde.INVALID_TEXT),
        (b'{"text": "' + b"x" * 21 + b'"}', serde.TEXT_TOO_LONG),
    ],
)
def test_rejections_say_why(value: bytes | None, error_type: str) -> None:
    rejection = serde.decode_event(value, ROUTE)
    assert isinstance(rejection, serde.Rejection)
    assert rejection.error_type == error_type
    assert rejection.message


def test_event_labels_are_used_only_when_allowed() -> None:
    value = b'{"text": "t", "labels": ["x", "y"]}'
    own = serde.decode_event(value, OWN_LABELS)
    assert isinstance(own, serde.DecodedEvent) and own.labels == ("x", "y")
    assert OWN_LABELS.task_for(own.labels).labels == ("x", "y")
    ignored = serde.decode_event(value, ROUTE)
    assert isinstance(ignored, serde.DecodedEvent) and ignored.labels is None
    assert ROUTE.task_for(ignored.labels).labels == ("a", "b")


@pytest.mark.parametrize("labels", [b"[]", b'"x"', b'["x", 3]', b'["x", "x"]', b'[""]'])
def test_bad_event_labels_are_rejected(labels: bytes) -> None:
    rejection = serde.decode_event(b'{"text": "t", "labels": ' + labels + b"}", OWN_LABELS)
    assert isinstance(rejection, serde.Rejection)
    assert rejection.error_type == serde.INVALID_LABELS


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
    return serde.classification(
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
    result = serde.classification(
        route, task, scores, model="m", label_ids=IDS, source=("posts", 0, 1)
    )
    assert result["hypothesis_template"] == ["T {}.", "U {}."]
    assert result["groups"] == {
        "mood": {"labels": ["y", "x"], "scores": [0.75, 0.25], "predicted": ["y"]}
    }
    assert result["logits"]["a"] == {"entailment": [10.0, 11.0], "contradiction": [0.0, 1.0]}
    assert result["logits"]["b"] == {"entailment": [12.0, 12.0], "contradiction": [2.0, 2.0]}
    assert result["logits"]["y"]["entailment"] == [15.0, 16.0]


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


def test_output_is_the_input_plus_classification_and_fits_the_schema() -> None:
    body = {"id": "x1", "text": "hello", "nested": {"k": [1]}}
    value = serde.encode_output(body, make([0.2, 0.7, 0.1], multi_label=False))
    decoded = orjson.loads(value)
    assert {k: decoded[k] for k in body} == body
    OutputEvent.model_validate(decoded)
