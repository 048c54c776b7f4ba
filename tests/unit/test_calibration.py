"""Calibration: the temperature and thresholds it fits, and the command that reports them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml

from tests.texts import labelled_fortunes
from worker.calibration import (
    Example,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    fit_threshold,
)
from worker.nli.base import Task
from worker.nli.labels import LabelIds

IDS = LabelIds(entailment_id=1, contradiction_id=0)


def synthetic(task: Task, true_temperature: float, n: int, seed: int = 7) -> list[Example]:
    """Events whose labels are drawn from the scores at `true_temperature`."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        logits = rng.normal(0, 3, size=(len(task.labels), 2))
        calibrated = Task(task.labels, "{}", True, temperature=true_temperature)
        p = np.array(calibrated.score(logits, IDS).scores)
        gold = frozenset(label for label, q in zip(task.labels, p, strict=True) if rng.random() < q)
        examples.append(Example(logits, gold))
    return examples


def test_the_fitted_temperature_recovers_the_true_one() -> None:
    task = Task(("a", "b", "c", "d"), "{}", True)
    result = calibrate(task, IDS, synthetic(task, 3.0, 1500), holdout=0.3)
    assert result.temperature == pytest.approx(3.0, rel=0.15)
    assert result.after.log_loss < result.before.log_loss
    assert result.after.ece < result.before.ece
    assert set(result.thresholds) == set(task.labels)


def test_golden_section_finds_the_minimum() -> None:
    assert fit_temperature(lambda t: (np.log(t) - np.log(2.5)) ** 2) == pytest.approx(2.5, rel=1e-6)


def test_expected_calibration_error_of_perfect_and_overconfident_scores() -> None:
    assert expected_calibration_error(np.array([0.25] * 4), np.array([1, 0, 0, 0.0])) == 0.0
    assert expected_calibration_error(np.array([0.95] * 4), np.array([1, 0, 1, 0.0])) == (
        pytest.approx(0.45)
    )


def test_thresholds_maximise_f1_or_reach_a_precision() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3])
    truth = np.array([1, 1, 0, 1, 0, 0.0])
    assert fit_threshold(scores, truth, None) == 0.6
    assert fit_threshold(scores, truth, target_precision=1.0) == 0.8


def test_the_command_reports_before_and_after_and_writes_the_config(
    tiny_bart_dir: Path, tmp_path: Path
) -> None:
    sample = labelled_fortunes(120, max_chars=400)
    labels = sorted({f.label for f in sample})[:6]
    data = tmp_path / "labelled.jsonl"
    data.write_bytes(
        b"\n".join(
            orjson.dumps({"text": f.text, "labels": [f.label]}) for f in sample if f.label in labels
        )
    )
    config = tmp_path / "config.yaml"
    topic = {"input": "in", "output": "out", "labels": labels, "multi_label": True}
    config.write_text(yaml.safe_dump({"model": {"dtype": "float32"}, "topics": [topic]}))
    result = subprocess.run(
        [sys.executable, "-m", "worker", "calibrate", "--config", str(config), "--topic", "in",
         "--data", str(data), "--model", str(tiny_bart_dir), "--write"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line}
    before, after = [float(x) for x in lines["before"]], [float(x) for x in lines["after"]]
    assert before != after, "calibration changes F1 and ECE"
    assert after[2] <= before[2] + 0.05, "the fitted temperature does not worsen the log-loss much"
    written = yaml.safe_load(config.read_text())["topics"][0]["calibration"]
    assert written["temperature"] > 0 and set(written["thresholds"]) == set(labels)
