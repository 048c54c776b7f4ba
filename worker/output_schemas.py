"""Output schemas of the registry formats: the input's writer schema plus `classification`.

The classification is the same object as in a plain JSON output
(worker.classification), described once in Avro and once in JSON Schema.
Members that only some outputs carry (`groups`, `logits`, `chunks`,
`config_version`) are unions with null in Avro, and optional in JSON Schema.
"""

from __future__ import annotations

import json
from typing import Any

from worker.errors import OutputSchemaError

CLASSIFICATION_FIELD = "classification"
_TAKEN = (
    f"the input's schema has a {CLASSIFICATION_FIELD!r} field already: the output would"
    " overwrite it"
)

AVRO_NAMESPACE = "zsc_worker"
"""The namespace of the classification's Avro types, apart from any input's own names."""

_AVRO_STRINGS = {"type": "array", "items": "string"}
_AVRO_DOUBLES = {"type": "array", "items": "double"}
_AVRO_TOKEN_RANGE = {"type": "array", "items": "int"}
_AVRO_TOKEN_RANGES = {"type": "map", "values": _AVRO_TOKEN_RANGE}


def _avro_optional(name: str, schema: object) -> dict[str, Any]:
    return {"name": name, "type": ["null", schema], "default": None}


AVRO_CLASSIFICATION: dict[str, Any] = {
    "type": "record",
    "name": "Classification",
    "namespace": AVRO_NAMESPACE,
    "doc": "Scores zsc-worker added to the event (README: Events).",
    "fields": [
        {"name": "labels", "type": _AVRO_STRINGS},
        {"name": "scores", "type": _AVRO_DOUBLES},
        {"name": "predicted", "type": _AVRO_STRINGS},
        {"name": "multi_label", "type": "boolean"},
        {"name": "model", "type": "string"},
        _avro_optional("config_version", "string"),
        {"name": "hypothesis_template", "type": ["string", _AVRO_STRINGS]},
        {
            "name": "source",
            "type": {
                "type": "record",
                "name": "Source",
                "fields": [
                    {"name": "topic", "type": "string"},
                    {"name": "partition", "type": "int"},
                    {"name": "offset", "type": "long"},
                ],
            },
        },
        _avro_optional(
            "groups",
            {
                "type": "map",
                "values": {
                    "type": "record",
                    "name": "GroupClassification",
                    "fields": [
                        {"name": "labels", "type": _AVRO_STRINGS},
                        {"name": "scores", "type": _AVRO_DOUBLES},
                        {"name": "predicted", "type": _AVRO_STRINGS},
                    ],
                },
            },
        ),
        _avro_optional(
            "logits",
            {
                "type": "map",
                "values": {
                    "type": "record",
                    "name": "Logits",
                    "fields": [
                        {"name": "entailment", "type": _AVRO_DOUBLES},
                        {"name": "contradiction", "type": _AVRO_DOUBLES},
                    ],
                },
            },
        ),
        _avro_optional(
            "chunks",
            {
                "type": "record",
                "name": "Chunks",
                "fields": [
                    {"name": "count", "type": "int"},
                    {"name": "aggregate", "type": "string"},
                    _avro_optional("token_ranges", _AVRO_TOKEN_RANGES),
                    _avro_optional("groups", {"type": "map", "values": _AVRO_TOKEN_RANGES}),
                ],
            },
        ),
    ],
}

_JSON_STRINGS = {"type": "array", "items": {"type": "string"}}
_JSON_NUMBERS = {"type": "array", "items": {"type": "number"}}
_JSON_TOKEN_RANGES = {
    "type": "object",
    "additionalProperties": {"type": "array", "items": {"type": "integer"}},
}

JSON_CLASSIFICATION: dict[str, Any] = {
    "type": "object",
    "description": "Scores zsc-worker added to the event (README: Events).",
    "properties": {
        "labels": _JSON_STRINGS,
        "scores": _JSON_NUMBERS,
        "predicted": _JSON_STRINGS,
        "multi_label": {"type": "boolean"},
        "model": {"type": "string"},
        "config_version": {"type": "string"},
        "hypothesis_template": {"anyOf": [{"type": "string"}, _JSON_STRINGS]},
        "source": {
            "type": "object",
            "properties": {
                "topic": {"type": "string"},
                "partition": {"type": "integer"},
                "offset": {"type": "integer"},
            },
            "required": ["topic", "partition", "offset"],
        },
        "groups": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "labels": _JSON_STRINGS,
                    "scores": _JSON_NUMBERS,
                    "predicted": _JSON_STRINGS,
                },
                "required": ["labels", "scores", "predicted"],
            },
        },
        "logits": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"entailment": _JSON_NUMBERS, "contradiction": _JSON_NUMBERS},
                "required": ["entailment", "contradiction"],
            },
        },
        "chunks": {
            "type": "object",
            "properties": {
                "count": {"type": "integer"},
                "aggregate": {"enum": ["max", "mean"]},
                "token_ranges": _JSON_TOKEN_RANGES,
                "groups": {"type": "object", "additionalProperties": _JSON_TOKEN_RANGES},
            },
            "required": ["count", "aggregate"],
        },
    },
    "required": [
        "labels",
        "scores",
        "predicted",
        "multi_label",
        "model",
        "hypothesis_template",
        "source",
    ],
}


def avro_output_schema(writer_schema: str) -> str:
    """The input's Avro record schema with a `classification` field appended.

    OutputSchemaError when the input is not a record, or has that field already.
    """
    schema = _loads(writer_schema)
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise OutputSchemaError(
            "the input's Avro schema is not a record: the output cannot add a field to it"
        )
    fields = schema.get("fields", [])
    if any(field.get("name") == CLASSIFICATION_FIELD for field in fields):
        raise OutputSchemaError(_TAKEN)
    field = {"name": CLASSIFICATION_FIELD, "type": AVRO_CLASSIFICATION}
    return json.dumps({**schema, "fields": [*fields, field]})


def json_output_schema(writer_schema: str) -> str:
    """The input's JSON Schema with a required `classification` property added.

    OutputSchemaError when the input does not describe an object, or has that property already.
    """
    schema = _loads(writer_schema)
    if schema is True:
        schema = {}
    if not isinstance(schema, dict) or schema.get("type", "object") not in ("object", ["object"]):
        raise OutputSchemaError(
            "the input's JSON Schema does not describe an object: the output cannot add a"
            " property to it"
        )
    properties = schema.get("properties", {})
    if CLASSIFICATION_FIELD in properties:
        raise OutputSchemaError(_TAKEN)
    return json.dumps(
        {
            **schema,
            "properties": {**properties, CLASSIFICATION_FIELD: JSON_CLASSIFICATION},
            "required": [*schema.get("required", []), CLASSIFICATION_FIELD],
        }
    )


def _loads(schema: str) -> Any:
    try:
        return json.loads(schema)
    except ValueError as exc:
        raise OutputSchemaError(f"the input's schema is not JSON: {exc}") from None
