"""Benchmarks on your own texts: the file formats `python -m bench --texts` reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.workload import WARMUP_TEXTS, file_workload


def test_json_lines_and_plain_lines_mix_and_the_last_texts_warm_up(tmp_path: Path) -> None:
    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "first", "id": 1}\nsecond\n\n{"text": "third"}\nfourth\n')
    load = file_workload(path, ["a", "b"], "It is {}.", multi_label=False)
    assert load.texts == ("first", "second")
    assert load.warmup == ("third", "fourth")
    assert len(load.warmup) == WARMUP_TEXTS
    assert (load.labels, load.template, load.multi_label) == (("a", "b"), "It is {}.", False)
    assert load.source == str(path)


def test_a_json_line_without_text_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "texts.jsonl"
    path.write_text('one\n{"body": "x"}\nthree\nfour\n')
    with pytest.raises(SystemExit, match=r"texts.jsonl:2: .*'text'"):
        file_workload(path)


def test_too_few_texts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    path.write_text("one\ntwo\n")
    with pytest.raises(SystemExit, match="more than 2"):
        file_workload(path)
