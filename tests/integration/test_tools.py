"""`zsc-worker produce` and `tail` against a real broker."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import orjson

from tests.integration.harness import read
from worker.kafka.admin import ensure_topics


def test_produce_sends_a_file_and_tail_prints_it(bootstrap_servers: str, tmp_path: Path) -> None:
    topic = f"tools-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap_servers, [topic])
    path = tmp_path / "events.jsonl"
    events = [{"id": i, "text": f"event {i}"} for i in range(25)]
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")

    produced = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "produce",
            str(path),
            "--topic",
            topic,
            "--bootstrap-servers",
            bootstrap_servers,
            "--key-field",
            "id",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert produced.returncode == 0, produced.stderr
    assert "25 events sent" in produced.stderr
    records = read(bootstrap_servers, [topic], 25, settle_s=0)
    assert sorted(r.key or b"" for r in records) == sorted(str(i).encode() for i in range(25))

    tailed = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "tail",
            "--topic",
            topic,
            "--bootstrap-servers",
            bootstrap_servers,
            "--from-beginning",
            "--max",
            "25",
            "--idle-timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tailed.returncode == 0, tailed.stderr
    lines = tailed.stdout.splitlines()
    assert sorted(orjson.loads(line)["id"] for line in lines) == list(range(25)), (
        "not on a terminal: JSON lines, one per record"
    )
