"""Results as a table: enriched events show their top labels, dead letters their reason."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from worker.errors import ConfigError
from worker.tool_formats import ValueDecoder, json_line, value_encoder
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


def test_produce_options_of_the_registry_formats_are_checked_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    schema = tmp_path / "note.avsc"
    schema.write_text('{"type": "record", "name": "Note", "fields": []}')
    with pytest.raises(ConfigError, match="--schema: --format avro needs the schema file"):
        value_encoder("avro", None, "http://registry:8081", "notes")
    with pytest.raises(ConfigError, match="--schema: plain JSON has no schema"):
        value_encoder("json", schema, None, "notes")
    with pytest.raises(ConfigError, match="--schema-registry: give the registry's URL"):
        value_encoder("json_schema", schema, None, "notes")
    (tmp_path / "bad.avsc").write_text('{"type": "recordd"}')
    with pytest.raises(ConfigError, match="not a valid avro schema"):
        value_encoder("avro", tmp_path / "bad.avsc", "http://registry:8081", "notes")
    with pytest.raises(ConfigError, match="cannot read"):
        value_encoder("avro", tmp_path / "missing.avsc", "http://registry:8081", "notes")
    assert value_encoder("json", None, None, "notes")(b'{"text": "x"}') == b'{"text": "x"}'


def test_tail_shows_plain_json_without_a_registry_and_a_framed_record_as_not_an_event() -> None:
    decode = ValueDecoder(None)
    assert decode("t", b'{"text": "x"}') == {"text": "x"}
    assert decode("t", b"\x00\x00\x00\x00\x01\x02") is None and decode("t", None) is None
    assert json_line({"raw": b"\x00\xff"}) == b'{"raw":"AP8="}'
