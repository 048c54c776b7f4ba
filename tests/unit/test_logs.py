"""JSON log lines carry the message, the level and the extra fields."""

from __future__ import annotations

import logging

import orjson

from worker.logs import JsonFormatter


def test_json_lines_have_the_message_level_and_extras() -> None:
    record = logging.LogRecord("worker.app", logging.WARNING, "f.py", 1, "lost %d", (3,), None)
    record.partition = 2
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["message"] == "lost 3"
    assert entry["level"] == "WARNING" and entry["logger"] == "worker.app"
    assert entry["partition"] == 2
    assert entry["time"].endswith("Z")
