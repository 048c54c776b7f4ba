"""Bytes to events and back: decoding with the reasons a record is dead-lettered, and encoding."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from worker.routing import Route

# Dead-letter reasons, the value of the `zsc.error.type` header.
EMPTY_VALUE = "empty_value"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_TEXT = "missing_text"
INVALID_TEXT = "invalid_text"
TEXT_TOO_LONG = "text_too_long"
INVALID_LABELS = "invalid_labels"
TOO_MANY_CHUNKS = "too_many_chunks"
INFERENCE_FAILED = "inference_failed"
OUTPUT_REJECTED = "output_rejected"
# Records of a schema-registry format (worker.formats).
INVALID_WIRE_FORMAT = "invalid_wire_format"
UNKNOWN_SCHEMA = "unknown_schema"
INVALID_AVRO = "invalid_avro"
INVALID_JSON_SCHEMA = "invalid_json_schema"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record cannot be classified."""

    error_type: str
    message: str


OutputWriter = Callable[[dict[str, Any], dict[str, Any]], "bytes | Rejection"]
"""Writes an event's output value: its decoded body with the classification added, in the
input's format; a Rejection when the output cannot be written."""


def encode_output(body: dict[str, Any], result: dict[str, Any]) -> bytes | Rejection:
    """The output record value as plain JSON: the input object with its classification added."""
    try:
        return orjson.dumps({**body, "classification": result})
    except orjson.JSONEncodeError as exc:
        # orjson reads JSON nested 1024 deep but writes only 254 levels.
        return Rejection(INVALID_JSON, f"the event cannot be written back as JSON: {exc}")


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    """A valid input event: its decoded object, text and own labels (if any), and how its
    output is written."""

    body: dict[str, Any]
    text: str
    labels: tuple[str, ...] | None
    writer: OutputWriter = encode_output

    def output(self, result: dict[str, Any]) -> bytes | Rejection:
        """The output value: this event with its classification, in the input's format."""
        return self.writer(self.body, result)


def decode_event(value: bytes | None, route: Route) -> DecodedEvent | Rejection:
    """Decode and validate one plain JSON record value against its topic's route."""
    if not value:
        return Rejection(EMPTY_VALUE, "the record has no value")
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as utf8_error:
            return Rejection(INVALID_UTF8, f"the value is not valid UTF-8: {utf8_error}")
        return Rejection(INVALID_JSON, f"the value is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return Rejection(NOT_AN_OBJECT, f"the value is JSON {type(body).__name__}, not an object")
    return validate_event(body, route)


def validate_event(
    body: dict[str, Any], route: Route, writer: OutputWriter = encode_output
) -> DecodedEvent | Rejection:
    """Check a decoded object's text (and own labels) against its topic's route."""
    field = route.text_field
    if field not in body:
        return Rejection(MISSING_TEXT, f"the event has no {field!r} field")
    text = body[field]
    if not isinstance(text, str) or not text.strip():
        return Rejection(INVALID_TEXT, f"{field!r} must be a non-empty string")
    if len(text) > route.max_text_chars:
        return Rejection(
            TEXT_TOO_LONG, f"{field!r} has {len(text)} characters, over {route.max_text_chars}"
        )
    labels = None
    if route.allow_event_labels and "labels" in body:
        if isinstance(found := _event_labels(body["labels"]), Rejection):
            return found
        labels = found
    return DecodedEvent(body, text, labels, writer)


def _event_labels(raw: object) -> tuple[str, ...] | Rejection:
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(label, str) and label.strip() for label in raw)
    ):
        return Rejection(INVALID_LABELS, "'labels' must be a non-empty list of non-empty strings")
    if len(set(raw)) != len(raw):
        return Rejection(INVALID_LABELS, "'labels' must be distinct")
    return tuple(raw)
