"""The fault suite's report: each scenario records one row of the README's table.

    .venv/bin/pytest -q tests/integration/faults

prints the table at the end of the session; with `ZSC_FAULT_REPORT=FILE` it is
also written to FILE as Markdown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.conftest import NameFactory, TopicFactory

REPORT_ENV = "ZSC_FAULT_REPORT"
HEADER = (
    "| scenario | guarantee | load held | faults injected | inputs | records out "
    "| duplicates | lost | seconds |"
)
RULE = "|---|---|---|---|---:|---:|---:|---:|---:|"


@dataclass(frozen=True, slots=True)
class FaultRow:
    """What one fault scenario did and what came out of it."""

    scenario: str
    guarantee: str
    load: str
    faults: str
    inputs: int
    outputs: int
    duplicates: int
    lost: int
    seconds: float

    def markdown(self) -> str:
        """The row in the README's table."""
        return (
            f"| {self.scenario} | {self.guarantee} | {self.load} | {self.faults} "
            f"| {self.inputs} | {self.outputs} | {self.duplicates} | {self.lost} "
            f"| {self.seconds:.0f} |"
        )


class Recorder(Protocol):
    """Adds a scenario's row to the session's report."""

    def __call__(self, row: FaultRow) -> None: ...


class EventTopics(Protocol):
    """Creates a scenario's input, output and dead-letter topics; returns their names."""

    def __call__(
        self, partitions: int = 1, *, admin: AdminClient | None = None
    ) -> tuple[str, str, str]: ...


@pytest.fixture
def event_topics(create_topics: TopicFactory, unique_name: NameFactory) -> EventTopics:
    """`source, sink, dlq = event_topics(partitions)`: fresh topics, `partitions` each."""

    def create(partitions: int = 1, *, admin: AdminClient | None = None) -> tuple[str, str, str]:
        names = [unique_name("in"), unique_name("out"), unique_name("dlq")]
        source, sink, dlq = create_topics(names, partitions=partitions, admin=admin)
        return source, sink, dlq

    return create


_rows: list[FaultRow] = []


@pytest.fixture
def record_fault() -> Iterator[Recorder]:
    """`record_fault(FaultRow(...))` once the scenario's figures are known."""

    def record(row: FaultRow) -> None:
        _rows.append(row)

    yield record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the rows recorded in this session, and write them where ZSC_FAULT_REPORT says."""
    if not _rows:
        return
    table = "\n".join([HEADER, RULE, *(row.markdown() for row in _rows)])
    terminalreporter.write_sep("=", "delivery under faults")
    terminalreporter.write_line(table)
    if target := os.environ.get(REPORT_ENV):
        Path(target).write_text(table + "\n", encoding="utf-8")
