"""Output schemas: the input's writer schema plus a classification every real output fits."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import jsonschema
import orjson
import pytest

from config.topics import TopicSettings
from worker.classification import classification_of
from worker.errors import OutputSchemaError
from worker.nli.base import Scores
from worker.nli.chunks import Aggregate, ChunkScores
from worker.nli.labels import LabelIds
from worker.output_schemas import avro_output_schema, json_output_schema
from worker.routing import Route

IDS = LabelIds(entailment_id=2, contradiction_id=0)
POST = {
    "type": "record",
    "name": "Post",
    "namespace": "example",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "text", "type": ["null", "string"], "default": None},
        {"name": "raw", "type": "bytes"},
    ],
}
POST_JSON = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"id": {"type": "integer"}, "text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}


def route(**topic: Any) -> Route:
    return Route.from_settings(
        TopicSettings(input="posts", output="out", labels=["a", "b"], **topic)
    )


def plain() -> dict[str, Any]:
    r = route()
    scores = Scores((0.3, 0.7))
    return classification_of(r, r.task, scores, model="m", label_ids=IDS, source=("posts", 0, 9))


def with_everything() -> dict[str, Any]:
    """Groups, logits, an ensemble of templates: every optional member but chunks."""
    r = route(
        hypothesis_template=["T {}.", "U {}."],
        label_groups={"mood": {"labels": ["x", "y"]}},
        include_logits=True,
    )
    logits = tuple((0.0, 1.0, float(i)) for i in range(len(r.task.hypotheses())))
    scores = Scores((0.3, 0.7), groups=((0.4, 0.6),), logits=logits)
    return classification_of(r, r.task, scores, model="m", label_ids=IDS, source=("posts", 1, 2))


def chunked() -> dict[str, Any]:
    r = route(label_groups={"mood": {"labels": ["x", "y"]}}, long_text={"strategy": "chunk"})
    chunks = ChunkScores(((0, 40), (32, 72)), Aggregate.MAX, best=(1, 0), group_best=((1, 1),))
    scores = Scores((0.3, 0.7), groups=((0.4, 0.6),), chunks=chunks)
    return classification_of(r, r.task, scores, model="m", label_ids=IDS, source=("posts", 0, 3))


CLASSIFICATIONS = [plain, with_everything, chunked]


@pytest.mark.parametrize("make", CLASSIFICATIONS)
def test_every_avro_output_round_trips_with_the_derived_schema(make: Any) -> None:
    schema = fastavro.parse_schema(json.loads(avro_output_schema(json.dumps(POST))))
    # As the output writer hands it over: the classification as plain JSON has it.
    classification = orjson.loads(orjson.dumps(make()))
    event = {"id": 1, "text": "hello", "raw": b"\x00\xff", "classification": classification}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, event)
    buffer.seek(0)
    back = fastavro.schemaless_reader(buffer, schema, schema)
    assert {k: v for k, v in back.items() if k != "classification"} == {
        "id": 1,
        "text": "hello",
        "raw": b"\x00\xff",
    }
    # Optional members absent from the JSON classification come back as null.
    assert {k: v for k, v in back["classification"].items() if v is not None} == classification


def test_the_avro_output_schema_keeps_the_input_and_appends_one_field() -> None:
    derived = json.loads(avro_output_schema(json.dumps(POST)))
    assert derived["fields"][:-1] == POST["fields"]
    assert derived["name"] == "Post" and derived["namespace"] == "example"
    assert derived["fields"][-1]["name"] == "classification"


@pytest.mark.parametrize(
    "schema",
    [
        {**POST, "fields": [*POST["fields"], {"name": "classification", "type": "string"}]},
        "string",
        {"type": "array", "items": "string"},
    ],
)
def test_an_avro_input_the_output_cannot_extend_is_refused(schema: object) -> None:
    with pytest.raises(OutputSchemaError):
        avro_output_schema(json.dumps(schema))


@pytest.mark.parametrize("make", CLASSIFICATIONS)
def test_every_json_output_fits_the_derived_json_schema(make: Any) -> None:
    schema = json.loads(json_output_schema(json.dumps(POST_JSON)))
    event = {"id": 1, "text": "hello", "classification": orjson.loads(orjson.dumps(make()))}
    jsonschema.validate(event, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"id": 1, "text": "no classification"}, schema)


def test_the_json_output_schema_keeps_the_input_and_adds_one_required_property() -> None:
    derived = json.loads(json_output_schema(json.dumps(POST_JSON)))
    assert {k: v for k, v in derived.items() if k not in ("properties", "required")} == {
        k: v for k, v in POST_JSON.items() if k not in ("properties", "required")
    }
    assert list(derived["properties"]) == ["id", "text", "classification"]
    assert derived["required"] == ["text", "classification"]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"classification": {"type": "string"}}},
        {"type": "string"},
        False,
    ],
)
def test_a_json_schema_the_output_cannot_extend_is_refused(schema: object) -> None:
    with pytest.raises(OutputSchemaError):
        json_output_schema(json.dumps(schema))
