"""`zsc-worker topics`: what is in force for an input topic, change it, go back to the file's
entry, list its control records.

The command reads the control topic from its beginning to its end and judges
every record in order with a `LiveTopics`, as every worker does
(`worker.control`): it shows what the workers serve, and refuses before
producing it a record that they would refuse. Without the configuration file
it judges against a stand-in entry, and says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson
import yaml
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException, Message

from config.settings import Settings, load_settings
from worker import errors
from worker.control import START_TIMEOUT_S, ControlReader, topic_exists
from worker.kafka.clients import make_command_producer, make_control_consumer, translate
from worker.live_topics import InForce, LiveTopics, version_of

# The stand-in entry without --config: what the record's keys are laid over to validate
# them. Its output and labels are placeholders for the file's, never shown.
STAND_IN_OUTPUT_SUFFIX = ".out"
STAND_IN_LABELS = ["(the file's labels)"]
WITHOUT_CONFIG = (
    "checked without the configuration file: keys a record leaves out are the file's, unknown"
    " here; --config FILE checks records as the workers will"
)
# Within a field of a history line, which is one line of tab-separated fields.
LINE_BREAKS = re.compile(r"[\t\r\n]+")
APPLIED = "applied"
TOMBSTONE = "tombstone"
# How long the broker may take to acknowledge the record produced.
DELIVERY_TIMEOUT_S = 30.0


def stand_in_entry(topic: str) -> dict[str, Any]:
    """A `topics` entry for `topic` where no configuration file gives one, to validate with."""
    return {"input": topic, "output": topic + STAND_IN_OUTPUT_SUFFIX, "labels": STAND_IN_LABELS}


def command_settings(
    topic: str, config: Path | None, bootstrap_servers: str | None, control_topic: str | None
) -> Settings:
    """The file's settings (or, without one, the environment's and a stand-in entry for
    `topic`), the flags over them; ConfigError where no control topic is named."""
    overrides: dict[str, Any] = {
        "kafka.bootstrap_servers": bootstrap_servers,
        "control_topic": control_topic,
    }
    if config is None:
        overrides["topics"] = [stand_in_entry(topic)]
    settings = load_settings(config, overrides)
    if not settings.control_topic:
        raise errors.ConfigError(
            "no control topic: give --control-topic, or set ZSC_CONTROL_TOPIC"
            " (or control_topic in the --config file)"
        )
    return settings


def flag_keys(labels: str | None, template: str | None, multi_label: bool | None) -> dict[str, Any]:
    """The keys of a `topics` entry that the flags given set (`--labels a,b` is a list)."""
    keys: dict[str, Any] = {}
    if labels is not None:
        keys["labels"] = [label.strip() for label in labels.split(",") if label.strip()]
    if template is not None:
        keys["hypothesis_template"] = template
    if multi_label is not None:
        keys["multi_label"] = multi_label
    return keys


def read_entry_file(path: Path) -> dict[str, Any]:
    """The keys of one `topics` entry written in a YAML file (`input` optional)."""
    try:
        entry = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise errors.ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(entry, dict):
        raise errors.ConfigError(f"{path}: expected a mapping of a `topics` entry's keys")
    return entry


def new_record(
    in_force: Mapping[str, Any] | None,
    flags: Mapping[str, Any],
    entry_keys: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record `set` produces: the flags' keys laid over the keys read from --file, else
    over the record in force (None after a tombstone or none)."""
    base = entry_keys if entry_keys is not None else in_force or {}
    return {**base, **flags}


@dataclass(frozen=True, slots=True)
class Judged:
    """A control record of the topic, as the workers judged it."""

    version: str
    timestamp: datetime | None
    value: bytes | None
    verdict: str
    """`applied`, or `rejected: REASON`."""

    def line(self) -> str:
        """Version, time (ISO 8601, UTC), verdict and value, separated by tabs; the value's
        own tabs and line breaks become spaces (whitespace in JSON)."""
        when = "-" if self.timestamp is None else self.timestamp.isoformat(timespec="milliseconds")
        value = TOMBSTONE if self.value is None else self.value.decode("utf-8", "replace")
        return "\t".join(
            LINE_BREAKS.sub(" ", field) for field in (self.version, when, self.verdict, value)
        )


class ControlLog:
    """A control topic read from its beginning to its end, every record judged in order as
    the workers judge it; the records of one input topic kept for its history."""

    def __init__(self, settings: Settings, topic: str) -> None:
        consumer = make_control_consumer(settings)
        self.topic = topic
        self.live = LiveTopics(settings.topics, settings.control_topic, topic_exists(consumer))
        self.records: list[Judged] = []
        self._reader = ControlReader(settings.control_topic, consumer)

    def read(self) -> None:
        """Judge every record up to the topic's end."""
        self._reader.read_all(self._judge, START_TIMEOUT_S)

    def close(self) -> None:
        """Close the consumer (`live` asks it whether topics exist until then)."""
        self._reader.close()

    def in_force(self) -> InForce:
        """The topic's entry in force; ConfigError where the file has no such input topic."""
        try:
            return self.live[self.topic]
        except KeyError:
            raise errors.ConfigError(
                f"--topic {self.topic!r} is not an input topic of the configuration file;"
                " input topics cannot be added at run time"
            ) from None

    def _judge(self, record: Message) -> None:
        partition, offset = record.partition(), record.offset()
        assert partition is not None and offset is not None
        version = version_of(partition, offset)
        try:
            self.live.apply(record.key(), record.value(), version)
            verdict = APPLIED
        except errors.ControlRecordError as exc:
            verdict = f"rejected: {exc}"
        if record.key() == self.topic.encode():
            self.records.append(Judged(version, timestamp_of(record), record.value(), verdict))


def timestamp_of(record: Message) -> datetime | None:
    """When the record was written (or appended), in UTC; None where it has no timestamp."""
    kind, milliseconds = record.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE:
        return None
    return datetime.fromtimestamp(milliseconds / 1000, tz=UTC)


def produce_record(settings: Settings, key: bytes, value: bytes | None) -> str:
    """Produce one control record, wait for its acknowledgement, return its version."""
    producer = make_command_producer(settings.kafka)
    reports: list[tuple[KafkaError | None, Message]] = []
    try:
        producer.produce(
            settings.control_topic,
            value,
            key,
            on_delivery=lambda error, message: reports.append((error, message)),
        )
    except KafkaException as exc:
        raise translate(exc, f"cannot produce to {settings.control_topic!r}") from None
    producer.flush(DELIVERY_TIMEOUT_S)
    if not reports:
        raise errors.ProduceError(
            f"the control record was not acknowledged in {DELIVERY_TIMEOUT_S:.0f} s; it may"
            " still be written: see `zsc-worker topics history`",
            code=KafkaError._MSG_TIMED_OUT,
            retriable=True,
        )
    [(error, message)] = reports
    if error is not None:
        raise errors.ProduceError(
            f"the control record was not written: {error.str()}",
            code=error.code(),
            retriable=error.retriable(),
        )
    partition, offset = message.partition(), message.offset()
    assert partition is not None and offset is not None
    return version_of(partition, offset)


def in_force_document(topic: str, in_force: InForce, with_config: bool) -> dict[str, Any]:
    """What `get`, `set` and `delete` print: the version in force, its entry (only where the
    configuration file gives it) and the record's keys."""
    document: dict[str, Any] = {
        "topic": topic,
        "version": in_force.version,
        "entry": in_force.entry.model_dump(mode="json") if with_config else None,
        "change": None if in_force.change is None else dict(in_force.change),
    }
    if not with_config:
        document["note"] = WITHOUT_CONFIG
    return document


def run_topics(
    action: str,
    settings: Settings,
    topic: str,
    with_config: bool,
    out: TextIO,
    err: TextIO,
    flags: Mapping[str, Any] | None = None,
    entry_keys: Mapping[str, Any] | None = None,
) -> int:
    """Run `get`, `set` (the record of `flags` and `entry_keys`), `delete` or `history`."""
    log = ControlLog(settings, topic)
    try:
        log.read()
        if action == "history":
            if not with_config:
                print(f"zsc-worker: {WITHOUT_CONFIG}", file=err)
            for judged in log.records:
                print(judged.line(), file=out)
            return 0
        in_force = log.in_force()
        if action == "set":
            record = new_record(in_force.change, flags or {}, entry_keys)
            in_force = _produce(log, settings, record, with_config, err)
        elif action == "delete":
            in_force = _produce(log, settings, None, with_config, err)
        document = in_force_document(topic, in_force, with_config)
        out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    finally:
        log.close()


def _produce(
    log: ControlLog,
    settings: Settings,
    record: Mapping[str, Any] | None,
    with_config: bool,
    err: TextIO,
) -> InForce:
    """Judge the record as the workers will; produce and apply it: what it puts in force."""
    key = log.topic.encode()
    value = None if record is None else orjson.dumps(record)
    try:
        log.live.judge(key, value)
    except errors.ControlRecordError as exc:
        checked = "" if with_config else f" ({WITHOUT_CONFIG})"
        raise errors.ConfigError(f"the workers would refuse this record: {exc}{checked}") from None
    version = produce_record(settings, key, value)
    written = TOMBSTONE if value is None else "control record"
    print(f"zsc-worker: {written} written to {settings.control_topic} at {version}", file=err)
    return log.live.apply(key, value, version)
