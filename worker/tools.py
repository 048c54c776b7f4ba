"""Tools a user reaches for beside the worker: send events, read results, see them as a table."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson
from confluent_kafka import Consumer, KafkaException, Producer
from tqdm import tqdm

from worker import errors
from worker.kafka.clients import translate
from worker.kafka.records import AnyHeaders
from worker.outputs import ERROR_TYPE
from worker.tool_formats import MAGIC_BYTE, ValueDecoder, ValueEncoder, json_line

TEXT_WIDTH = 58
TOPIC_WIDTH = 22
TOP_LABELS = 3
# How long `produce` waits for the last acknowledgements.
FLUSH_TIMEOUT_S = 60.0
POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One record of an output or dead-letter topic, as a person wants to see it."""

    topic: str
    text: str
    summary: str

    @classmethod
    def from_record(cls, topic: str, value: bytes | None, headers: AnyHeaders | None) -> ResultRow:
        """Summarise a plain JSON record: an enriched event or a dead-letter."""
        try:
            event = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            event = None
        return cls.from_event(topic, event, headers)

    @classmethod
    def from_event(cls, topic: str, event: Any, headers: AnyHeaders | None) -> ResultRow:
        """Summarise a decoded enriched event (its top labels) or a dead-letter (its reason)."""
        found = dict(headers or {})
        if ERROR_TYPE in found:
            reason = found[ERROR_TYPE] or ""
            return cls(
                topic,
                "(dead-lettered)",
                reason.decode(errors="replace") if isinstance(reason, bytes) else reason,
            )
        try:
            result = event["classification"]
            labels, scores = result["labels"][:TOP_LABELS], result["scores"][:TOP_LABELS]
            summary = ", ".join(f"{lbl} {s:.2f}" for lbl, s in zip(labels, scores, strict=True))
            # The topic's text field is not known here: `text`, else the first string.
            text = event.get("text")
            if not isinstance(text, str):
                text = next((v for v in event.values() if isinstance(v, str)), "")
        except (KeyError, TypeError, AttributeError):
            return cls(topic, "(not an enriched event)", "")
        return cls(topic, text, summary)


def table_header() -> str:
    """The header line and rule of a results table."""
    header = f"{'topic':<{TOPIC_WIDTH}} {'text':<{TEXT_WIDTH}} top labels"
    return header + "\n" + "-" * (TOPIC_WIDTH + TEXT_WIDTH + 42)


def table_line(row: ResultRow) -> str:
    """One row of a results table, the text cut to fit its column."""
    text = " ".join(row.text.split())
    if len(text) > TEXT_WIDTH:
        text = text[: TEXT_WIDTH - 1] + "…"
    return f"{row.topic:<{TOPIC_WIDTH}} {text:<{TEXT_WIDTH}} {row.summary}"


def print_table(rows: list[ResultRow], out: TextIO) -> None:
    """A whole results table."""
    print(table_header(), file=out)
    for row in rows:
        print(table_line(row), file=out)


def read_events(path: Path) -> Iterator[bytes]:
    """The non-blank lines of a JSON-lines file, each checked to be JSON."""
    try:
        with path.open("rb") as lines:
            for number, line in enumerate(lines, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise errors.ConfigError(f"{path}:{number}: not JSON: {exc}") from None
                yield line
    except OSError as exc:
        raise errors.ConfigError(f"cannot read {path}: {exc.strerror}") from None


def produce_file(
    bootstrap_servers: str,
    path: Path,
    topic: str,
    key_field: str | None,
    progress: bool,
    encode: ValueEncoder,
) -> int:
    """Send every event of a JSON-lines file to `topic`, each value as `encode` writes it;
    returns how many were acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True})
    failures: list[str] = []
    acknowledged = 0

    def delivered(error: object, _message: object) -> None:
        nonlocal acknowledged
        if error is None:
            acknowledged += 1
        else:
            failures.append(str(error))

    total = sum(1 for _ in read_events(path))
    with tqdm(total=total, unit="event", disable=not progress, desc=topic) as bar:
        for line in read_events(path):
            key = _key_of(line, key_field)
            value = encode(line)
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(POLL_S)
                except KafkaException as exc:
                    raise translate(exc, f"cannot produce to {topic!r}") from None
            producer.poll(0)
            bar.update(1)
        producer.flush(FLUSH_TIMEOUT_S)
    if failures:
        raise errors.ProduceError(f"{len(failures)} events were not delivered: {failures[0]}")
    return acknowledged


def _key_of(value: bytes, key_field: str | None) -> bytes | None:
    if key_field is None:
        return None
    event = orjson.loads(value)
    key = event.get(key_field) if isinstance(event, dict) else None
    return None if key is None else str(key).encode()


def tail(
    bootstrap_servers: str,
    topics: list[str],
    out: TextIO,
    as_table: bool,
    from_beginning: bool,
    max_records: int | None,
    idle_timeout_s: float | None,
    decode: ValueDecoder,
) -> int:
    """Print records of `topics` as they arrive: a table for people, JSON lines for programs.

    A record in a registry format is shown decoded (as a JSON line too); see
    worker.tool_formats.

    Stops after `max_records`, after `idle_timeout_s` without a record, or on Ctrl-C.
    Returns how many records were printed.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            # A throwaway group: tailing never moves a real group's offsets.
            "group.id": f"zsc-tail-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
        }
    )
    consumer.subscribe(topics)
    printed = 0
    last_seen = time.monotonic()
    if as_table:
        print(table_header(), file=out, flush=True)
    try:
        while max_records is None or printed < max_records:
            message = consumer.poll(POLL_S)
            if message is None or message.error() is not None:
                if idle_timeout_s is not None and time.monotonic() - last_seen > idle_timeout_s:
                    break
                continue
            last_seen = time.monotonic()
            topic, value = message.topic() or "", message.value()
            decoded = decode(topic, value)
            if as_table:
                row = ResultRow.from_event(topic, decoded, message.headers())
                print(table_line(row), file=out, flush=True)
            else:
                framed = decoded is not None and value is not None and value[0] == MAGIC_BYTE
                line = json_line(decoded) if framed else (value or b"")
                out.write(line.decode("utf-8", "replace") + "\n")
                out.flush()
            printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return printed
