"""The commands that need no broker: classify and schema."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from schemas import SCHEMAS
from tests.texts import fortunes
from worker import cli


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_classify_prints_the_pipelines_output_for_arguments_and_stdin(tiny_bart_dir: Path) -> None:
    from transformers import pipeline

    texts = [" ".join(text.split()) for text in fortunes(6)]  # stdin is line by line
    labels = ["computers", "love", "food"]
    stdin = "\n".join([texts[3], orjson.dumps({"text": texts[4]}).decode(), "", texts[5]])
    common = ["classify", "--model", str(tiny_bart_dir), "--labels", ",".join(labels)]
    common += ["--template", "It is about {}.", "--multi-label", "--dtype", "float32"]
    from_args = run_cli(*common, *texts[:3])
    from_stdin = run_cli(*common, stdin=stdin)
    assert from_args.returncode == 0, from_args.stderr
    assert from_stdin.returncode == 0, from_stdin.stderr
    lines = [json.loads(line) for line in (from_args.stdout + from_stdin.stdout).splitlines()]
    reference = pipeline("zero-shot-classification", model=str(tiny_bart_dir), device="cpu")
    expected = reference(
        texts, candidate_labels=labels, hypothesis_template="It is about {}.", multi_label=True
    )
    assert len(lines) == len(texts)
    for line, want in zip(lines, expected, strict=True):
        assert line["sequence"] == want["sequence"]
        assert line["labels"] == want["labels"]
        assert line["scores"] == pytest.approx(want["scores"], abs=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", " , "], "--labels: give at least one label"),
        (["--labels", "a", "--template", "no placeholder"], "--template"),
    ],
)
def test_classify_refuses_bad_arguments(args: list[str], message: str) -> None:
    stderr = io.StringIO()
    sys_stderr, sys.stderr = sys.stderr, stderr
    try:
        code = cli.main(["classify", "--model", "unused", *args, "text"])
    finally:
        sys.stderr = sys_stderr
    assert code == cli.EXIT_CONFIG
    assert message in stderr.getvalue()


def test_a_missing_model_directory_is_a_model_error(tmp_path: Path) -> None:
    result = run_cli("classify", "--model", str(tmp_path / "nothing"), "--labels", "a", "t")
    assert result.returncode == cli.EXIT_MODEL
    assert "Traceback" not in result.stderr


def test_schema_prints_each_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema", "output_event"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["title"] == "OutputEvent"
    assert cli.main(["schema"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(SCHEMAS)


def test_client_properties_librdkafka_refuses_stop_start_up_before_the_model_loads(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "kafka:\n  consumer: {queued.min.messages: 0}\n"
        "metrics_port: 0\n"
        "topics: [{input: posts, output: posts.out, labels: [a, b]}]\n"
    )
    # A model that does not exist: had it been loaded first, this would be a model error.
    result = run_cli("run", "--config", str(config), "--model", str(tmp_path / "nothing"))
    assert result.returncode == cli.EXIT_CONFIG, result.stderr
    assert "kafka.consumer" in result.stderr
    assert "queued.min.messages" in result.stderr
    assert "Traceback" not in result.stderr
