"""Decoding input records (and the reasons for dead-lettering), encoding outputs."""

from __future__ import annotations

import orjson
import pytest

from config.topics import TopicSettings
from schemas import OutputEvent
from tests.unit.test_classification import make
from worker import serde
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


def test_output_is_the_input_plus_classification_and_fits_the_schema() -> None:
    body = {"id": "x1", "text": "hello", "nested": {"k": [1]}}
    value = serde.encode_output(body, make([0.2, 0.7, 0.1], multi_label=False))
    decoded = orjson.loads(value)
    assert {k: decoded[k] for k in body} == body
    OutputEvent.model_validate(decoded)
