"""`zsc-worker run` as a process: a config file, real and malformed events, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import orjson
import yaml

from tests.integration.harness import (
    SESSION_TIMEOUT_MS,
    assert_scores_match,
    committed,
    pipeline_scores,
    produce,
    read,
)
from tests.texts import fortunes
from worker.kafka.admin import ensure_topics

LABELS = ["computers", "love", "food", "politics"]


def test_run_classifies_then_exits_cleanly_on_sigterm(
    bootstrap_servers: str, tiny_bart_dir: str, tmp_path: Path
) -> None:
    base = f"cli-{uuid.uuid4().hex[:8]}"
    source, sink, dlq = f"{base}.in", f"{base}.out", f"{base}.dlq"
    ensure_topics(bootstrap_servers, [source, sink, dlq], partitions=2)
    group = f"g-{base}"
    config = {
        "kafka": {"consumer": {"session.timeout.ms": SESSION_TIMEOUT_MS}},
        "model": {"name": "not-this-one", "device": "cpu", "dtype": "float32"},
        "metrics_port": 0,
        "topics": [
            {
                "input": source,
                "output": sink,
                "dead_letter": dlq,
                "labels": LABELS,
                "multi_label": True,
            }
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    texts = fortunes(30)
    values = [orjson.dumps({"id": i, "text": t, "meta": {"n": i}}) for i, t in enumerate(texts)]
    values += [b"not json at all", b'{"text": 3}']
    produce(bootstrap_servers, source, values, keys=[str(i).encode() for i in range(len(values))])

    env = {**os.environ, "ZSC_GROUP_ID": "overridden-by-the-flag"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker",
            "run",
            "--config",
            str(path),
            "--bootstrap-servers",
            bootstrap_servers,
            "--group-id",
            group,
            "--model",
            str(tiny_bart_dir),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        outputs = read(bootstrap_servers, [sink, dlq], len(values), timeout_s=180)
    finally:
        process.send_signal(signal.SIGTERM)
        log, _ = process.communicate(timeout=60)
    assert process.returncode == 0, log.decode(errors="replace")[-3000:]

    classified = [o for o in outputs if o.topic == sink]
    dead = [o for o in outputs if o.topic == dlq]
    assert Counter(o.json()["id"] for o in classified) == {i: 1 for i in range(len(texts))}
    assert sorted(o.headers["zsc.error.type"] for o in dead) == [b"invalid_json", b"invalid_text"]
    expected = pipeline_scores(tiny_bart_dir, texts, LABELS, "This example is {}.", True)
    for output in classified:
        event = output.json()
        assert event["meta"] == {"n": event["id"]}
        assert_scores_match(event["classification"], expected[event["id"]])
    assert sum(committed(bootstrap_servers, group, source, 2)) == len(values)


def test_bad_config_stops_start_up_with_the_key_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("batching: {max_wait_ms: -1}\ntopics: [{input: a, output: b, labels: [x]}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "batching.max_wait_ms" in result.stderr
    assert "greater than or equal to 0" in result.stderr
    assert "Traceback" not in result.stderr
