"""The exported JSON Schema files equal the event models."""

from __future__ import annotations

from schemas import SCHEMA_DIR, OutputEvent, schema_documents


def test_exported_schemas_are_current() -> None:
    for filename, text in schema_documents().items():
        on_disk = (SCHEMA_DIR / filename).read_text(encoding="utf-8")
        assert on_disk == text, f"{filename} is stale: run `python -m schemas`"


def test_output_event_keeps_unknown_fields() -> None:
    event = OutputEvent.model_validate(
        {
            "text": "a goal in the last minute",
            "author": "x",
            "classification": {
                "labels": ["sports"],
                "scores": [0.9],
                "predicted": ["sports"],
                "multi_label": False,
                "model": "m",
                "config_version": "file",
                "hypothesis_template": "This example is {}.",
                "source": {"topic": "posts", "partition": 0, "offset": 3},
            },
        }
    )
    assert event.model_extra == {"author": "x"}
