"""The registry formats in the tools: `produce --format avro|json_schema --schema FILE`
writes events in the Confluent wire format, and `tail` reads records in any format."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.serde import SchemaId
from confluent_kafka.serialization import MessageField, SerializationContext

from config.registry import SchemaRegistrySettings
from worker import errors
from worker.formats import SERDE_CONFIG
from worker.registry import REGISTRY_ERRORS, describe, make_registry_client, unknown_schema

URL_ENV = "ZSC_SCHEMA_REGISTRY_URL"
USER_INFO_ENV = "ZSC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"
MAGIC_BYTE = 0
"""The first byte of a record in the Confluent wire format."""

ValueEncoder = Callable[[bytes], bytes]
"""An event's JSON line to the record value `produce` sends."""


def registry_client(url: str | None) -> SchemaRegistryClient:
    """A client of the registry at `url`, logged in as `USER_INFO_ENV` says if set."""
    if not url:
        raise errors.ConfigError(f"--schema-registry: give the registry's URL (or set {URL_ENV})")
    user_info = os.environ.get(USER_INFO_ENV)
    settings = SchemaRegistrySettings.model_validate(
        {"url": url, **({"basic_auth_user_info": user_info} if user_info else {})}
    )
    return make_registry_client(settings)


def value_encoder(
    fmt: str, schema: Path | None, registry_url: str | None, topic: str
) -> ValueEncoder:
    """How `produce` writes each event: as it is (json), or with the schema in `schema`,
    registered under `<topic>-value`, in the Confluent wire format."""
    if fmt == "json":
        if schema is not None:
            raise errors.ConfigError("--schema: plain JSON has no schema; give --format too")
        return lambda line: line
    if schema is None:
        raise errors.ConfigError(f"--schema: --format {fmt} needs the schema file")
    try:
        text = schema.read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.ConfigError(f"cannot read {schema}: {exc.strerror}") from None
    client = registry_client(registry_url)
    context = SerializationContext(topic, MessageField.VALUE)
    try:
        if fmt == "avro":
            serializer: Any = AvroSerializer(client, Schema(text, "AVRO"), conf=SERDE_CONFIG)
        else:
            serializer = JSONSerializer(Schema(text, "JSON"), client, conf=SERDE_CONFIG)
    except REGISTRY_ERRORS as exc:
        raise errors.ZscError(f"schema registry: {describe(exc)}") from None
    except Exception as exc:  # fastavro's and jsonschema's errors have no common base
        raise errors.ConfigError(f"{schema}: not a valid {fmt} schema: {exc}") from None

    def encode(line: bytes) -> bytes:
        try:
            value: bytes = serializer(orjson.loads(line), context)
        except REGISTRY_ERRORS as exc:
            raise errors.ZscError(f"schema registry: {describe(exc)}") from None
        except Exception as exc:  # the serializers' errors have no common base
            raise errors.ConfigError(f"an event does not fit {schema}: {exc}") from None
        return value

    return encode


class ValueDecoder:
    """What `tail` shows of a record value: plain JSON, or, with a registry, Avro or JSON
    Schema in the wire format; None when it is neither (or its schema is unknown)."""

    def __init__(self, registry_url: str | None) -> None:
        self._client = registry_client(registry_url) if registry_url else None
        self._deserializers: dict[str, Callable[..., Any]] = {}

    def __call__(self, topic: str, value: bytes | None) -> Any:
        if not value:
            return None
        if value[0] != MAGIC_BYTE or self._client is None:
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError:
                return None
        context = SerializationContext(topic, MessageField.VALUE)
        try:
            deserializer = self._deserializer(value)
            return None if deserializer is None else deserializer(value, context)
        except SchemaRegistryError as exc:
            if unknown_schema(exc):
                return None
            raise errors.ZscError(f"schema registry: {describe(exc)}") from None
        except REGISTRY_ERRORS as exc:
            raise errors.ZscError(f"schema registry: {describe(exc)}") from None
        except Exception:  # not in the wire format, or not in its schema: not an event
            return None

    def _deserializer(self, value: bytes) -> Callable[..., Any] | None:
        """The deserializer of the record's schema language; None for one tail cannot read."""
        assert self._client is not None
        schema_id = SchemaId("AVRO")  # the language only matters for Protobuf's indexes
        schema_id.from_bytes(io.BytesIO(value))
        assert schema_id.id is not None
        language = self._client.get_schema(schema_id.id).schema_type
        if language not in self._deserializers:
            if language == "AVRO":
                self._deserializers[language] = AvroDeserializer(self._client, conf=SERDE_CONFIG)
            elif language == "JSON":
                self._deserializers[language] = JSONDeserializer(
                    None, schema_registry_client=self._client, conf=SERDE_CONFIG
                )
            else:
                return None
        return self._deserializers[language]


def json_line(decoded: Any) -> bytes:
    """A decoded value as one JSON line: Avro bytes as base64."""
    return orjson.dumps(decoded, default=_bytes_as_base64)


def _bytes_as_base64(value: object) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON")
