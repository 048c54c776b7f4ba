"""Results as a table: enriched events show their top labels, dead letters their reason."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from worker.errors import ConfigError
from worker.tools import ResultRow, read_events, table_line


def test_an_enriched_event_shows_its_text_and_top_labels() -> None:
    value = orjson.dumps(
        {
            "id": 1,
            "text": "The striker scored\ntwice.",
            "classification": {
                "labels": ["sports", "politics", "tech", "food"],
                "scores": [0.9, 0.05, 0.03, 0.02],
            },
        }
    )
    row = ResultRow.from_record("posts.out", value, None)
    assert row.summary == "sports 0.90, politics 0.05, tech 0.03"
    line = table_line(row)
    assert line.startswith("posts.out") and "The striker scored twice." in line


def test_a_custom_text_field_is_still_shown() -> None:
    value = orjson.dumps(
        {"id": 1, "body": "a comment", "classification": {"labels": [], "scores": []}}
    )
    assert ResultRow.from_record("t", value, None).text == "a comment"


def test_a_dead_letter_shows_its_reason_and_junk_does_not_crash() -> None:
    row = ResultRow.from_record("t.dlq", b"\xff", [("zsc.error.type", b"invalid_utf8")])
    assert (row.text, row.summary) == ("(dead-lettered)", "invalid_utf8")
    assert ResultRow.from_record("t", b"[1]", None).text == "(not an enriched event)"


def test_long_texts_are_cut_to_the_column() -> None:
    line = table_line(ResultRow("t", "x" * 500, "a 1.00"))
    assert "…" in line and len(line) < 120


def test_read_events_skips_blank_lines_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert list(read_events(path)) == [b'{"text": "a"}', b'{"text": "b"}']
    path.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"events\.jsonl:2"):
        list(read_events(path))
