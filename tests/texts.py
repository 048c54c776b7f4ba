"""Real texts for tests and benchmarks: Debian's fortune cookies.

Each fortune file (computers, science, politics, food, ...) is a topic, so its
name is a real label. Missing packages skip the test that asked, saying what to
install.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import chain, zip_longest
from pathlib import Path

import pytest

FORTUNES_DIR = Path("/usr/share/games/fortunes")
LANGUAGE_DIRS = {"en": FORTUNES_DIR, "de": FORTUNES_DIR / "de"}
PACKAGES = {"en": "fortunes", "de": "fortunes-de"}
# Fortune files hold records separated by a line with a single "%".
SEPARATOR = "%"
# Index files and encoding aliases sit beside the text files.
NOT_TEXT_SUFFIXES = (".dat", ".u8")
# Drawings rather than prose: nothing to classify.
PICTURE_FILES = frozenset({"art", "ascii-art", "asciiart"})
# Long enough for multi-paragraph fortunes, short enough to keep tests quick.
DEFAULT_MAX_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Fortune:
    """A fortune's text and the file (topic) it comes from."""

    text: str
    label: str


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # A few old files are Latin-1.
        return raw.decode("latin-1")


def _records(path: Path) -> list[str]:
    records: list[str] = []
    current: list[str] = []
    for line in _decode(path.read_bytes()).splitlines():
        if line.strip() == SEPARATOR:
            records.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    records.append("\n".join(current).strip())
    return [r for r in records if r]


@functools.cache
def _files(lang: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Every text file of the language's package, sorted by name, with its records."""
    directory = LANGUAGE_DIRS.get(lang)
    if directory is None:
        raise ValueError(f"no fortunes in {lang!r}: expected one of {sorted(LANGUAGE_DIRS)}")
    files = (
        sorted(
            p
            for p in directory.iterdir()
            if p.is_file()
            and not p.is_symlink()
            and not p.name.endswith(NOT_TEXT_SUFFIXES)
            and p.name not in PICTURE_FILES
        )
        if directory.is_dir()
        else []
    )
    return tuple((p.name, tuple(_records(p))) for p in files)


def labelled_fortunes(
    n: int, lang: str = "en", max_chars: int = DEFAULT_MAX_CHARS, min_chars: int = 1
) -> list[Fortune]:
    """Up to `n` fortunes with their file name as label, always in the same order.

    The files take turns (first fortune of each file, then the second, ...), so
    even a few fortunes span many topics. Skips the calling test when the
    language's package is not installed.
    """
    files = _files(lang)
    if not files:
        pytest.skip(
            f"Debian's {PACKAGES[lang]} package is not installed: apt-get install {PACKAGES[lang]}"
        )
    per_file = ([Fortune(text, name) for text in records] for name, records in files)
    interleaved = (f for f in chain.from_iterable(zip_longest(*per_file)) if f is not None)
    chosen = (f for f in interleaved if min_chars <= len(f.text) <= max_chars)
    return [f for _, f in zip(range(n), chosen, strict=False)]


def fortunes(
    n: int, lang: str = "en", max_chars: int = DEFAULT_MAX_CHARS, min_chars: int = 1
) -> list[str]:
    """Up to `n` fortune texts, always in the same order (see `labelled_fortunes`)."""
    return [f.text for f in labelled_fortunes(n, lang, max_chars, min_chars)]
