"""Routes: what each input topic's events are classified against and where results go."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from config.settings import Settings
from config.topics import LabelEntry, LabelSpec, LongTextSettings, TopicSettings, label_names_of
from worker.nli.base import LabelGroup, Task
from worker.nli.chunks import Aggregate, Chunking

FILE_VERSION = "file"
"""The configuration version of a topic entry as the configuration file has it."""


@dataclass(frozen=True, slots=True)
class Rule:
    """An extra destination of the enriched event, and when it applies."""

    topic: str
    label: str | None = None
    min_score: float = 0.0
    none_above: float | None = None

    def matches(self, scores: Mapping[str, float]) -> bool:
        """Whether the rule applies to an event with these scores (its main labels')."""
        if self.none_above is not None:
            return all(score < self.none_above for score in scores.values())
        return self.label is not None and scores.get(self.label, -1.0) >= self.min_score


@dataclass(frozen=True, slots=True)
class Route:
    """One input topic's destinations and classification task, in one configuration version.

    An event keeps the route it was read with, whatever replaces it meanwhile.
    """

    input: str
    output: str
    dead_letter: str
    task: Task
    threshold: float
    text_field: str
    allow_event_labels: bool
    max_text_chars: int
    thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Calibrated per-label thresholds of the main labels; the others take `threshold`."""
    group_thresholds: tuple[float, ...] = ()
    include_logits: bool = False
    rules: tuple[Rule, ...] = ()
    version: str = FILE_VERSION
    """`file`, or the control record (`partition:offset`) this entry came from."""
    format: str = "json"
    """How the topic's records are written: json, avro or json_schema (see worker.formats)."""

    @classmethod
    def from_settings(cls, topic: TopicSettings, version: str = FILE_VERSION) -> Route:
        """Build the route of one topic entry, in the configuration version given."""
        template = topic.hypothesis_template
        groups = topic.label_groups.items()
        entries = [*topic.labels, *(e for _, g in groups for e in g.labels)]
        task = Task(
            labels=tuple(topic.label_names),
            hypothesis_template=template if isinstance(template, str) else tuple(template),
            multi_label=topic.multi_label,
            own_hypotheses=_own_hypotheses(entries),
            groups=tuple(
                LabelGroup(name, tuple(label_names_of(group.labels)), group.multi_label)
                for name, group in groups
            ),
            temperature=topic.calibration.temperature,
            long_text=_chunking(topic.long_text),
        )
        return cls(
            input=topic.input,
            output=topic.output,
            dead_letter=topic.dead_letter,
            task=task,
            threshold=topic.threshold,
            text_field=topic.text_field,
            allow_event_labels=topic.allow_event_labels,
            max_text_chars=topic.max_text_chars,
            thresholds=dict(topic.calibration.thresholds),
            group_thresholds=tuple(group.threshold for _, group in groups),
            include_logits=topic.include_logits,
            rules=tuple(
                Rule(r.topic, r.label, r.min_score or 0.0, r.none_above) for r in topic.routes
            ),
            version=version,
            format=topic.format,
        )

    def task_for(self, event_labels: tuple[str, ...] | None) -> Task:
        """The event's own labels when it has some and the topic allows them, else the topic's."""
        if event_labels and self.allow_event_labels:
            return dataclasses.replace(self.task, labels=event_labels)
        return self.task

    def destinations(self, scores: Mapping[str, float]) -> list[str]:
        """The route topics whose rules match these main-label scores."""
        return [rule.topic for rule in self.rules if rule.matches(scores)]


def _chunking(long_text: LongTextSettings) -> Chunking | None:
    if not long_text.chunked:
        return None
    return Chunking(
        window=long_text.window,
        stride=long_text.stride,
        aggregate=Aggregate(long_text.aggregate),
        max_chunks=long_text.max_chunks,
    )


def _own_hypotheses(entries: list[LabelEntry]) -> tuple[tuple[str, str], ...]:
    return tuple((e.name, e.hypothesis) for e in entries if isinstance(e, LabelSpec))


class Router:
    """Looks up the route of a record by its topic; a live configuration change replaces one."""

    def __init__(self, routes: list[Route]) -> None:
        self._routes = {route.input: route for route in routes}

    @classmethod
    def from_settings(cls, settings: Settings) -> Router:
        """Routes for every topic entry of the configuration."""
        return cls([Route.from_settings(topic) for topic in settings.topics])

    @property
    def input_topics(self) -> list[str]:
        """The topics to subscribe to."""
        return list(self._routes)

    @property
    def routes(self) -> list[Route]:
        """The route of each input topic now."""
        return list(self._routes.values())

    def route(self, topic: str) -> Route:
        """The route of an input topic; KeyError for a topic not configured."""
        return self._routes[topic]

    def replace(self, route: Route) -> None:
        """Route the events of `route.input` read from now on by `route`."""
        if route.input not in self._routes:
            raise KeyError(f"{route.input!r} is not an input topic")
        self._routes[route.input] = route
