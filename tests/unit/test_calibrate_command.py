"""`zsc-worker calibrate` refuses what it cannot fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings
from worker import errors
from worker.calibrate_command import run_calibration
from worker.nli.fake import FakeClassifier


def test_a_topic_that_chunks_long_texts_is_refused(tmp_path: Path) -> None:
    # The fit needs one set of logits per label and event; a chunked text has one per chunk.
    settings = Settings(
        topics=[
            {
                "input": "posts",
                "output": "out",
                "labels": ["a", "b"],
                "long_text": {"strategy": "chunk"},
            }
        ]
    )
    with pytest.raises(errors.ConfigError, match="strategy truncate"):
        run_calibration(settings, "posts", FakeClassifier(), tmp_path / "none.jsonl", 0.3, None)
