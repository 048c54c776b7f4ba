"""Input topics: their labels, label groups, calibration, routes, and topic loops."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from config.model import ConfigModel
from config.model_settings import TopicModelSettings, topic_model

DEFAULT_TEMPLATE = "This example is {}."
# Texts longer than this are dead-lettered: the model sees at most ~1,000 tokens
# (a few thousand characters) anyway, and a huge text only costs tokenizer time.
DEFAULT_MAX_TEXT_CHARS = 100_000
# A chunk of ~400 tokens leaves room for the hypothesis within DeBERTa-v3's 512
# tokens; 64 tokens of overlap keep a sentence cut at one edge whole in the other.
DEFAULT_WINDOW = 400
DEFAULT_STRIDE = 64
# 16 chunks of 400 tokens are ~20,000 characters of English: an article, a long email.
DEFAULT_MAX_CHUNKS = 16
PROTOBUF_REFUSAL = (
    "protobuf is not supported yet: its output would need a message type generated from the"
    " input's descriptor plus a classification message, which the worker does not build, and"
    " writing the output in another format would break its readers; use avro or json_schema"
)


class LabelSpec(ConfigModel):
    """A label with a hypothesis of its own instead of the topic's templates."""

    name: str = Field(min_length=1)
    hypothesis: str = Field(min_length=1)


LabelEntry = str | LabelSpec


def label_names_of(entries: list[LabelEntry]) -> list[str]:
    """The names of label entries, in order."""
    return [entry if isinstance(entry, str) else entry.name for entry in entries]


def _check_labels(entries: list[LabelEntry]) -> list[LabelEntry]:
    names = label_names_of(entries)
    if any(not name.strip() for name in names):
        raise ValueError("labels must be non-empty strings")
    if len(set(names)) != len(names):
        raise ValueError("labels must be distinct")
    return entries


class LabelGroupSettings(ConfigModel):
    """Labels scored in their own mode beside the topic's labels (e.g. sentiment)."""

    labels: list[LabelEntry] = Field(min_length=1)
    multi_label: bool = False
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="For `predicted` when multi_label.")

    _labels_ok = field_validator("labels")(_check_labels)


class CalibrationSettings(ConfigModel):
    """Confidence calibration: a logit temperature and per-label decision thresholds."""

    temperature: float = Field(
        1.0, gt=0, description="Divides the logits before every softmax; fitted by `calibrate`."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-label thresholds that override `threshold`."
    )

    @field_validator("thresholds")
    @classmethod
    def _probabilities(cls, thresholds: dict[str, float]) -> dict[str, float]:
        if any(not 0.0 <= value <= 1.0 for value in thresholds.values()):
            raise ValueError("thresholds must lie between 0 and 1")
        return thresholds


class LongTextSettings(ConfigModel):
    """What happens to a text longer than the model takes beside its hypotheses."""

    strategy: Literal["truncate", "chunk"] = Field(
        "truncate",
        description="truncate: the model sees the start only, as the pipeline does. chunk: "
        "overlapping windows, each scored, the scores aggregated (a pair per window and "
        "hypothesis).",
    )
    window: int = Field(
        DEFAULT_WINDOW,
        ge=2,
        description="Premise tokens per chunk; narrowed to the room the longest hypothesis leaves.",
    )
    stride: int = Field(
        DEFAULT_STRIDE,
        ge=0,
        description="Tokens two neighbouring chunks share: more keeps cut sentences whole, "
        "costs more chunks.",
    )
    aggregate: Literal["max", "mean"] = Field(
        "max",
        description="A label's score over the chunks: max (its best chunk; for moderation) "
        "or mean (the text as a whole).",
    )
    max_chunks: int = Field(
        DEFAULT_MAX_CHUNKS,
        ge=1,
        description="Texts needing more chunks are dead-lettered (`too_many_chunks`): "
        "bounds an event's cost.",
    )

    @model_validator(mode="after")
    def _advances(self) -> LongTextSettings:
        if self.stride >= self.window:
            raise ValueError("stride must be smaller than window, or the chunks never advance")
        return self

    @property
    def chunked(self) -> bool:
        """Whether long texts are cut into chunks rather than truncated."""
        return self.strategy == "chunk"


class RouteSettings(ConfigModel):
    """Extra destination: when `label` scores `min_score` or more, or none is above `none_above`."""

    topic: str = Field(min_length=1)
    label: str | None = None
    min_score: float | None = Field(None, ge=0.0, le=1.0)
    none_above: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_rule(self) -> RouteSettings:
        by_label = (self.label is not None, self.min_score is not None)
        by_none_above = self.none_above is not None
        if by_label not in ((True, True), (False, False)) or all(by_label) == by_none_above:
            raise ValueError("a route has either `label` with `min_score`, or `none_above`")
        return self


class TopicSettings(ConfigModel):
    """One input topic: where its results go and what its events are classified against."""

    input: str = Field(min_length=1, description="The topic read.")
    output: str = Field(min_length=1, description="The topic the enriched events go to.")
    dead_letter: str = Field("", description='Where undecodable events go; default "<input>.dlq".')
    labels: list[LabelEntry] = Field(
        min_length=1, description="Candidate labels: a name, or {name, hypothesis}."
    )
    hypothesis_template: str | list[str] = Field(
        DEFAULT_TEMPLATE, description="`{}` becomes the label; a list is an ensemble (mean)."
    )
    multi_label: bool = Field(False, description="Score each label on its own.")
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Multi-label: labels scoring at least this are predicted."
    )
    format: Literal["json", "avro", "json_schema", "protobuf"] = Field(
        "json",
        description="How records are written: json (plain), or avro | json_schema in the"
        " Confluent wire format with schema_registry; outputs are written in the same format.",
    )
    text_field: str = Field("text", min_length=1, description="The field holding the text.")
    allow_event_labels: bool = Field(
        False, description="An event's own `labels` list wins over the topic's."
    )
    max_text_chars: int = Field(
        DEFAULT_MAX_TEXT_CHARS, ge=1, description="Longer texts are dead-lettered."
    )
    label_groups: dict[str, LabelGroupSettings] = Field(
        default_factory=dict, description="Named label sets scored in their own mode."
    )
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    include_logits: bool = Field(False, description="Add the raw NLI logits to the output.")
    long_text: LongTextSettings = Field(default_factory=LongTextSettings)
    routes: list[RouteSettings] = Field(
        default_factory=list, description="Extra topics the enriched event goes to."
    )
    model: TopicModelSettings | None = Field(
        None,
        description="This topic's own model: a hub id or directory, or {name, device, dtype}"
        " (left out: the top-level model's); unset: the top-level `model`.",
    )

    _labels_ok = field_validator("labels")(_check_labels)
    _model_shorthand = field_validator("model", mode="before")(topic_model)

    @field_validator("format")
    @classmethod
    def _supported_format(cls, value: str) -> str:
        if value == "protobuf":
            raise ValueError(PROTOBUF_REFUSAL)
        return value

    @field_validator("hypothesis_template")
    @classmethod
    def _has_placeholder(cls, template: str | list[str]) -> str | list[str]:
        if isinstance(template, list):
            if not template:
                raise ValueError("an ensemble needs at least one template")
            for one in template:
                check_template(one)
            return template
        return check_template(template)

    @property
    def label_names(self) -> list[str]:
        """The labels' names, in order."""
        return label_names_of(self.labels)

    @property
    def all_label_names(self) -> set[str]:
        """The names of the topic's labels and of every group's."""
        names = set(self.label_names)
        for group in self.label_groups.values():
            names |= set(label_names_of(group.labels))
        return names

    @property
    def extra_outputs(self) -> list[str]:
        """The route topics."""
        return [route.topic for route in self.routes]

    @model_validator(mode="after")
    def _consistent(self) -> TopicSettings:
        if not self.dead_letter:
            object.__setattr__(self, "dead_letter", f"{self.input}.dlq")
        known = self.all_label_names
        if unknown := set(self.calibration.thresholds) - known:
            raise ValueError(f"calibration.thresholds name unknown labels {sorted(unknown)}")
        if unknown := {r.label for r in self.routes if r.label is not None} - known:
            raise ValueError(f"routes name unknown labels {sorted(unknown)}")
        if self.include_logits and self.long_text.chunked:
            raise ValueError(
                "include_logits cannot be combined with long_text.strategy chunk: a chunked"
                " text has logits per chunk, not one set per label"
            )
        return self


def topic_loops(topics: list[TopicSettings]) -> list[str]:
    """Each output, route or dead-letter topic that is also an input topic, by its key.

    The worker would consume such a topic's records again and classify them forever.
    """
    inputs = {topic.input: index for index, topic in enumerate(topics)}
    loops: list[str] = []
    for index, topic in enumerate(topics):
        written = [
            (f"topics.{index}.output", topic.output),
            *(
                (f"topics.{index}.routes.{n}.topic", name)
                for n, name in enumerate(topic.extra_outputs)
            ),
            (f"topics.{index}.dead_letter", topic.dead_letter),
        ]
        for key, name in written:
            if name in inputs:
                loops.append(
                    f"{key}: {name!r} is also an input topic (topics.{inputs[name]}.input),"
                    " so its records would be consumed again and classified forever"
                )
    return loops


def written_topics(topics: list[TopicSettings]) -> set[str]:
    """Every topic the worker writes to: outputs, routes and dead-letter topics."""
    return {
        name for topic in topics for name in (topic.output, topic.dead_letter, *topic.extra_outputs)
    }


def check_template(template: str) -> str:
    """Refuse a hypothesis template that has no `{}` for the label, as the pipeline does."""
    if "{}" not in template:
        raise ValueError('must contain "{}" where the label goes')
    return template
