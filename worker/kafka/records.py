"""The parts of a Kafka record the worker reads, as a Protocol so pure logic tests use stubs."""

from __future__ import annotations

from typing import Protocol

# As consumed records carry them, and as the producer takes them.
Headers = list[tuple[str, str | bytes | None]]
# What confluent_kafka's types allow a Message's headers to be.
AnyHeaders = Headers | dict[str, str | bytes | None]


class Record(Protocol):
    """A consumed record; confluent_kafka.Message satisfies it."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> AnyHeaders | None: ...
    def timestamp(self) -> tuple[int, int]: ...


def headers_of(record: Record) -> Headers | None:
    """A record's headers as pairs, in order (a Message gives pairs; its type allows a dict)."""
    headers = record.headers()
    return list(headers.items()) if isinstance(headers, dict) else headers
