"""Live topic entries: the configuration file's, each changed by the control records for it.

A control record's key is an input topic's name. Its value is a JSON object of
keys of a `topics` entry, laid over the file's entry for that topic: a key
left out keeps the file's value. A null value (a tombstone) goes back to the
file's entry. Records apply in control-topic order, and one that is invalid
changes nothing. The worker (`worker.control`) and the `topics` command judge
records with the same `LiveTopics`, so the command refuses what every worker
would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from config.settings import problems
from config.topics import TopicSettings, written_topics
from worker.errors import ControlRecordError
from worker.routing import FILE_VERSION

TopicExists = Callable[[str], bool]
"""Whether a topic exists on the cluster (asked of topics a record writes to that the
configuration file does not)."""


@dataclass(frozen=True, slots=True)
class InForce:
    """A topic's entry in force, and the configuration version it is."""

    entry: TopicSettings
    version: str
    """`file`, or the applied control record's `partition:offset`."""
    change: Mapping[str, Any] | None = None
    """The control record's keys; None where the file's entry is in force."""


@dataclass(frozen=True, slots=True)
class Change:
    """What a valid control record does: the entry it puts in force for its topic."""

    topic: str
    entry: TopicSettings
    change: Mapping[str, Any] | None
    """The record's keys; None for a tombstone."""


def version_of(partition: int, offset: int) -> str:
    """The configuration version a control record names: its partition and offset."""
    return f"{partition}:{offset}"


def parse_record(key: bytes | None, value: bytes | None) -> tuple[str, dict[str, Any] | None]:
    """The input topic a control record is for, and its keys (None for a tombstone)."""
    if not key:
        raise ControlRecordError("the record has no key: it must be an input topic's name")
    try:
        topic = key.decode("utf-8")
    except UnicodeDecodeError:
        raise ControlRecordError("the key is not UTF-8: it must be an input topic's name") from None
    if value is None:
        return topic, None
    try:
        change = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ControlRecordError(f"the value is not JSON: {exc}") from None
    if not isinstance(change, dict):
        raise ControlRecordError("the value must be a JSON object of a `topics` entry's keys")
    if change.get("input", topic) != topic:
        raise ControlRecordError(f"input {change['input']!r} differs from the key {topic!r}")
    return topic, change


class LiveTopics:
    """The topic entries in force: the file's, each replaced by its last valid control record."""

    def __init__(
        self, file_topics: Iterable[TopicSettings], control_topic: str, topic_exists: TopicExists
    ) -> None:
        self._file = {topic.input: topic for topic in file_topics}
        # Topics the file writes to are known to exist (or to be the file's own to create).
        self._file_writes = written_topics(list(self._file.values()))
        self._control_topic = control_topic
        self._in_force = {name: InForce(entry, FILE_VERSION) for name, entry in self._file.items()}
        self._topic_exists = topic_exists

    def __getitem__(self, topic: str) -> InForce:
        return self._in_force[topic]

    @property
    def topics(self) -> list[str]:
        """The input topics, in the configuration file's order."""
        return list(self._in_force)

    def judge(self, key: bytes | None, value: bytes | None) -> Change:
        """What the record would put in force; ControlRecordError saying why it is invalid."""
        topic, change = parse_record(key, value)
        if topic not in self._file:
            raise ControlRecordError(
                f"{topic!r} is not an input topic of the configuration file; input topics"
                " cannot be added at run time: add it to `topics` and restart the workers"
            )
        file_entry = self._file[topic]
        if change is None:
            return Change(topic, file_entry, None)
        try:
            entry = TopicSettings.model_validate(
                {**file_entry.model_dump(), **change, "input": topic}
            )
        except ValidationError as exc:
            raise ControlRecordError("; ".join(problems(exc))) from None
        if entry.model != file_entry.model:
            # Loading a model takes seconds to minutes and memory the worker may not have.
            raise ControlRecordError(
                "model cannot be changed at run time; restart with the file changed"
            )
        if entry.format != file_entry.format:
            raise ControlRecordError(
                f"format cannot change at run time ({file_entry.format} in the configuration"
                " file): records already on the topic are in that format; change the file and"
                " restart the workers"
            )
        written = written_topics([entry])
        if looping := sorted(written & self._file.keys()):
            raise ControlRecordError(
                f"it writes to input topics {looping}: their records would be consumed again"
                " and classified forever"
            )
        if self._control_topic in written:
            raise ControlRecordError(f"it writes to the control topic {self._control_topic!r}")
        for name in sorted(written - self._file_writes):
            if not self._topic_exists(name):
                raise ControlRecordError(f"topic {name!r} does not exist: create it first")
        return Change(topic, entry, change)

    def apply(self, key: bytes | None, value: bytes | None, version: str) -> InForce:
        """Put the record's entry in force as `version`; ControlRecordError changes nothing."""
        change = self.judge(key, value)
        in_force = InForce(
            change.entry, FILE_VERSION if change.change is None else version, change.change
        )
        self._in_force[change.topic] = in_force
        return in_force
