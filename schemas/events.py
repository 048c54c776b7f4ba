"""The events on the wire: what the worker reads, and what it writes.

The worker decodes with orjson and checks the few fields it needs by hand (the
hot path); these models are the documented contract, exported as JSON Schema
files beside this module and kept equal to them by a test.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InputEvent(BaseModel):
    """A text event. The text field is `text` unless the topic names another one."""

    model_config = ConfigDict(extra="allow", title="InputEvent")

    id: str | int | None = Field(None, description="Optional; passed through.")
    text: str = Field(min_length=1, description="The premise classified against the labels.")
    labels: list[str] | None = Field(
        None, description="The event's own labels; used when the topic allows event labels."
    )


class Source(BaseModel):
    """Where the input event was read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class Chunks(BaseModel):
    """How a long text was scored in chunks (the topic's `long_text.strategy` is chunk)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(ge=1, description="How many overlapping token windows were scored.")
    aggregate: Literal["max", "mean"] = Field(
        description="How each label's chunk scores became its score."
    )
    token_ranges: dict[str, tuple[int, int]] | None = Field(
        None,
        description="With max: for each label, the premise tokens [start, end) of the chunk"
        " that gave its score.",
    )
    groups: dict[str, dict[str, tuple[int, int]]] | None = Field(
        None, description="With max and label groups: the same for each group's labels."
    )


class Classification(BaseModel):
    """The scores the worker adds to an event."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Classification")

    labels: list[str] = Field(description="Sorted by descending score.")
    scores: list[float] = Field(description="Aligned with labels.")
    predicted: list[str] = Field(
        description="Labels with score >= threshold when multi_label, else the top one."
    )
    multi_label: bool
    model: str
    config_version: str = Field(
        description='The topic entry that scored it: "file", or the control record\'s'
        ' "partition:offset".'
    )
    hypothesis_template: str
    source: Source
    chunks: Chunks | None = Field(
        None, description="Present when the text was too long for the model and scored in chunks."
    )


class OutputEvent(InputEvent):
    """The input event, every field kept, plus its classification."""

    model_config = ConfigDict(extra="allow", title="OutputEvent")

    classification: Classification


SCHEMAS: dict[str, type[BaseModel]] = {
    "input_event": InputEvent,
    "classification": Classification,
    "output_event": OutputEvent,
}
