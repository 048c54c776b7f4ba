"""Routes: what each input topic's events are classified against and where results go."""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import Settings, TopicSettings
from worker.nli.base import Task


@dataclass(frozen=True, slots=True)
class Route:
    """One input topic's destinations and classification task, fixed at start-up."""

    input: str
    output: str
    dead_letter: str
    task: Task
    threshold: float
    text_field: str
    allow_event_labels: bool
    max_text_chars: int

    @classmethod
    def from_settings(cls, topic: TopicSettings) -> Route:
        """Build the route of one topic entry of the configuration."""
        return cls(
            input=topic.input,
            output=topic.output,
            dead_letter=topic.dead_letter,
            task=Task(tuple(topic.labels), topic.hypothesis_template, topic.multi_label),
            threshold=topic.threshold,
            text_field=topic.text_field,
            allow_event_labels=topic.allow_event_labels,
            max_text_chars=topic.max_text_chars,
        )

    def task_for(self, event_labels: tuple[str, ...] | None) -> Task:
        """The event's own labels when it has some and the topic allows them, else the topic's."""
        if event_labels and self.allow_event_labels:
            return Task(event_labels, self.task.hypothesis_template, self.task.multi_label)
        return self.task


class Router:
    """Looks up the route of a record by its topic."""

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

    def route(self, topic: str) -> Route:
        """The route of an input topic; KeyError for a topic not configured."""
        return self._routes[topic]
