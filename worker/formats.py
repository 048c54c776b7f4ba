"""Record formats: plain JSON, and Avro or JSON Schema in the Confluent wire format.

A registry record is a magic byte, a 4-byte schema id, then the payload; the
schemas are in the registry. confluent-kafka's serdes read and write them. An
output is written in its input's format: its schema is the input's writer
schema plus `classification` (worker.output_schemas), registered under the
output topic's subject (`<output>-value`) the first time an input schema id
is seen, and cached with its serializer. Only schema ids not seen before go
to the network; a registry that does not answer raises RegistryUnavailable
(see worker.registry), and the record waits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    dual_schema_id_deserializer,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.serde import SchemaId
from confluent_kafka.serialization import Deserializer, MessageField, SerializationContext

from config.settings import Settings
from worker import serde
from worker.errors import OutputSchemaError
from worker.kafka.records import Headers
from worker.output_schemas import CLASSIFICATION_FIELD, avro_output_schema, json_output_schema
from worker.registry import (
    REGISTRY_ERRORS,
    RegistryClientFactory,
    RegistryStatus,
    describe,
    make_registry_client,
    schema_refused,
    unknown_schema,
)
from worker.routing import Route

# TopicNameStrategy: `<topic>-value`, without asking the registry for subject
# associations (the serdes' default, which not every registry answers).
SERDE_CONFIG = {"subject.name.strategy.type": "TOPIC"}


@dataclass(frozen=True, slots=True)
class WireFormat:
    """What differs between Avro and JSON Schema."""

    name: str
    schema_type: str
    """The registry's name of the schema language."""
    invalid: str
    """The dead-letter reason of a payload that does not decode with its schema."""
    deserializer: Callable[[SchemaRegistryClient], Deserializer]
    serializer: Callable[[SchemaRegistryClient, Schema], Callable[..., bytes | None]]
    output_schema: Callable[[str], str]


AVRO = WireFormat(
    "avro",
    "AVRO",
    serde.INVALID_AVRO,
    # Record names of union branches come back with the values, so a value of a
    # union of records is written back as the same branch.
    lambda client: AvroDeserializer(client, return_record_name=True, conf=SERDE_CONFIG),
    lambda client, schema: AvroSerializer(client, schema, conf=SERDE_CONFIG),
    avro_output_schema,
)
JSON_SCHEMA = WireFormat(
    "json_schema",
    "JSON",
    serde.INVALID_JSON_SCHEMA,
    lambda client: JSONDeserializer(None, schema_registry_client=client, conf=SERDE_CONFIG),
    lambda client, schema: JSONSerializer(schema, client, conf=SERDE_CONFIG),
    json_output_schema,
)
WIRE_FORMATS = {wire.name: wire for wire in (AVRO, JSON_SCHEMA)}


def needs_registry(settings: Settings) -> bool:
    """Whether a configured topic is in a registry format."""
    return any(topic.format in WIRE_FORMATS for topic in settings.topics)


class Formats:
    """Decodes each record in its topic's format; RegistryUnavailable while the registry is
    away."""

    def __init__(self, client: SchemaRegistryClient | None, status: RegistryStatus) -> None:
        """`client`: None where no topic reads a registry format."""
        self._status = status
        self._registry = (
            {}
            if client is None
            else {name: RegistryFormat(wire, client, status) for name, wire in WIRE_FORMATS.items()}
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        status: RegistryStatus,
        make_client: RegistryClientFactory = make_registry_client,
    ) -> Formats:
        """The formats of the configured topics, with a registry client if one needs it."""
        client = make_client(settings.schema_registry) if needs_registry(settings) else None
        return cls(client, status)

    def retry_due(self) -> bool:
        """Whether to ask the registry again now (records wait for it)."""
        return self._status.retry_due()

    def decode(
        self, value: bytes | None, headers: Headers | None, route: Route
    ) -> serde.DecodedEvent | serde.Rejection:
        """The record's event, or why it is dead-lettered."""
        if route.format == "json":
            return serde.decode_event(value, route)
        return self._registry[route.format].decode(value, headers, route)


@dataclass(frozen=True, slots=True)
class OutputSchema:
    """The output schema of one input schema on one output topic, and its serializer."""

    schema_id: int
    serializer: Callable[..., bytes | None]
    context: SerializationContext

    def write(self, body: dict[str, Any], result: dict[str, Any]) -> bytes | serde.Rejection:
        """The output value; a Rejection when the library will not write it.

        The classification goes in as plain JSON has it (token ranges as lists,
        not tuples): JSON Schema validation tells the two apart.
        """
        classification = orjson.loads(orjson.dumps(result))
        try:
            value = self.serializer({**body, CLASSIFICATION_FIELD: classification}, self.context)
        except Exception as exc:  # the serializer's errors have no common base
            reason = f"the output does not fit its schema (id {self.schema_id}): {exc}"
            return serde.Rejection(serde.OUTPUT_REJECTED, reason)
        assert value is not None
        return value


class RegistryFormat:
    """Avro or JSON Schema records, read and written with confluent-kafka's serdes."""

    def __init__(
        self, wire: WireFormat, client: SchemaRegistryClient, status: RegistryStatus
    ) -> None:
        self._wire = wire
        self._client = client
        self._status = status
        self._deserializer = wire.deserializer(client)
        self._outputs: dict[tuple[int, str], OutputSchema | serde.Rejection] = {}
        """By input schema id and output topic."""

    def decode(
        self, value: bytes | None, headers: Headers | None, route: Route
    ) -> serde.DecodedEvent | serde.Rejection:
        """Decode the record with its writer schema, and find its output schema."""
        if not value:
            return serde.Rejection(serde.EMPTY_VALUE, "the record has no value")
        context = SerializationContext(route.input, MessageField.VALUE, headers)
        schema_id = SchemaId(self._wire.schema_type)
        try:
            dual_schema_id_deserializer(value, context, schema_id)
        except Exception as exc:  # struct.error for a short record, SerializationError, ...
            return serde.Rejection(
                serde.INVALID_WIRE_FORMAT,
                f"not in the Confluent wire format (magic byte 0, 4-byte schema id): {exc}",
            )
        if schema_id.id is None:
            return serde.Rejection(
                serde.INVALID_WIRE_FORMAT, "the record names its schema by GUID, not by id"
            )
        try:
            writer, body = self._read(value, context, schema_id.id)
        except SchemaRegistryError as exc:
            reason = f"schema id {schema_id.id}: {describe(exc)}"
            return serde.Rejection(serde.UNKNOWN_SCHEMA, reason)
        if isinstance(body, serde.Rejection):
            return body
        if not isinstance(body, dict):
            return serde.Rejection(
                serde.NOT_AN_OBJECT,
                f"schema {schema_id.id} describes a {type(body).__name__}, not a record",
            )
        if not isinstance(body.get(route.text_field), str):
            return serde.Rejection(
                serde.MISSING_TEXT, f"the record has no string {route.text_field!r} field"
            )
        output = self._output(schema_id.id, writer, route.output)
        if isinstance(output, serde.Rejection):
            return output
        return serde.validate_event(body, route, output.write)

    def _read(
        self, value: bytes, context: SerializationContext, schema_id: int
    ) -> tuple[Schema, object]:
        """The writer schema and the decoded value (or why it does not decode).

        SchemaRegistryError when the registry does not know the schema (or one
        it references).
        """
        subject = _subject(context)
        writer = self._status.call(
            f"schema {schema_id}",
            lambda: self._client.get_schema(schema_id, subject),
            unknown_schema,
        )
        try:
            # The writer schema is in the client's cache now; a schema it
            # references is fetched the first time.
            return writer, self._deserializer(value, context)
        except REGISTRY_ERRORS as exc:
            self._status.failed(f"the references of schema {schema_id}", exc, unknown_schema)
        except Exception as exc:  # fastavro's and jsonschema's errors have no common base
            reason = f"the value does not decode with schema {schema_id}: {describe(exc)}"
            return writer, serde.Rejection(self._wire.invalid, reason)

    def _output(self, schema_id: int, writer: Schema, topic: str) -> OutputSchema | serde.Rejection:
        """The output schema of an input schema, registered once per output topic."""
        key = (schema_id, topic)
        if (known := self._outputs.get(key)) is not None:
            return known
        assert writer.schema_str is not None
        try:
            derived = self._wire.output_schema(writer.schema_str)
        except OutputSchemaError as exc:
            found: OutputSchema | serde.Rejection = serde.Rejection(
                serde.OUTPUT_REJECTED, f"schema {schema_id}: {exc}"
            )
        else:
            output = Schema(derived, self._wire.schema_type, writer.references)
            found = self._register(output, topic)
        self._outputs[key] = found
        return found

    def _register(self, output: Schema, topic: str) -> OutputSchema | serde.Rejection:
        """Register the output schema under the topic's subject, and make its serializer."""
        context = SerializationContext(topic, MessageField.VALUE)
        subject = _subject(context)
        try:
            output_id = self._status.call(
                f"registering {subject}",
                lambda: self._client.register_schema(subject, output),
                schema_refused,
            )
        except SchemaRegistryError as exc:
            reason = f"the registry refused the output schema of {subject}: {describe(exc)}"
            return serde.Rejection(serde.OUTPUT_REJECTED, reason)
        # Its first call finds the registration above in the client's cache: writing
        # an output never waits for the registry.
        serializer = self._wire.serializer(self._client, output)
        return OutputSchema(output_id, serializer, context)


def _subject(context: SerializationContext) -> str:
    """The registry subject of a topic's values (TopicNameStrategy: `<topic>-value`)."""
    subject = topic_subject_name_strategy(context, None)
    assert subject is not None
    return subject
