"""Pydantic models of the events and their exported JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import SCHEMAS, Chunks, Classification, InputEvent, OutputEvent, Source

SCHEMA_DIR = Path(__file__).parent


def schema_documents() -> dict[str, str]:
    """Each schema file's name and the text it must hold."""
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        + "\n"
        for name, model in SCHEMAS.items()
    }


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Export the JSON Schemas of the event models; returns the files written."""
    written = []
    for filename, text in schema_documents().items():
        path = directory / filename
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


__all__ = [
    "SCHEMAS",
    "Chunks",
    "Classification",
    "InputEvent",
    "OutputEvent",
    "Source",
    "schema_documents",
    "write_schemas",
]
