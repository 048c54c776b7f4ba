"""The README's configuration reference is the one generated from the settings model."""

from __future__ import annotations

from pathlib import Path

from config.reference import END_MARKER, START_MARKER, reference

README = Path(__file__).parents[2] / "README.md"


def test_the_readme_reference_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(START_MARKER), text.index(END_MARKER) + len(END_MARKER)
    assert text[start:end] == reference(), "run `python -m config.reference` into the README"


def test_every_setting_is_described() -> None:
    undescribed = [row for row in reference().splitlines() if row.endswith("|  |")]
    assert not undescribed, undescribed
