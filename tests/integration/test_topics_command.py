"""`zsc-worker topics` as a process against the real broker: what it prints, what it
produces to the control topic, what it refuses, and that a running worker agrees."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition

from tests.integration.conftest import NameFactory, TopicFactory
from tests.integration.harness import make_settings, produce, read, running
from worker.activity import config_versions
from worker.nli.fake import FakeClassifier

LABELS = ["sports", "politics"]
COMMAND_TIMEOUT_S = 120
SWITCH_TIMEOUT_S = 30.0

Topics = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def names(unique_name: NameFactory, create_topics: TopicFactory) -> dict[str, str]:
    """An input topic (not created: the command never reads it) and a control topic."""
    control = unique_name("control")
    create_topics([control])
    return {"input": unique_name("in"), "control": control}


def entry(names: dict[str, str], **keys: Any) -> dict[str, Any]:
    return {"input": names["input"], "output": names["input"] + ".scored", "labels": LABELS, **keys}


@pytest.fixture
def config(tmp_path: Path, bootstrap_servers: str, names: dict[str, str]) -> Path:
    """The workers' configuration file: one topic, the control topic."""
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": bootstrap_servers},
                "control_topic": names["control"],
                "topics": [entry(names)],
            }
        )
    )
    return path


@pytest.fixture
def topics(bootstrap_servers: str, names: dict[str, str]) -> Topics:
    """Runs `zsc-worker topics ACTION --topic INPUT ...` with the broker's address."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environment = {
            name: value for name, value in os.environ.items() if not name.startswith("ZSC_")
        }
        return subprocess.run(
            [sys.executable, "-m", "worker", "topics", *args, "--topic", names["input"]],
            env={**environment, "ZSC_BOOTSTRAP_SERVERS": bootstrap_servers, **(env or {})},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )

    return run


def printed(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = orjson.loads(result.stdout)
    return document


def control_records(bootstrap_servers: str, control: str) -> list[tuple[bytes | None, Any]]:
    """Every record of the control topic: its key and its value as JSON (None: tombstone)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": "unused", "enable.auto.commit": False}
    )
    try:
        partition = TopicPartition(control, 0)
        _, end = consumer.get_watermark_offsets(partition, timeout=30)
    finally:
        consumer.close()
    outputs = read(bootstrap_servers, [control], end, timeout_s=30, settle_s=0) if end else []
    return [(o.key, None if o.value is None else orjson.loads(o.value)) for o in outputs]


def test_set_then_get_shows_the_record_in_force_with_its_version(
    topics: Topics, config: Path, names: dict[str, str], bootstrap_servers: str
) -> None:
    control = ["--config", str(config)]
    before = printed(topics("get", *control))
    assert (before["version"], before["change"]) == ("file", None)
    assert before["entry"]["labels"] == LABELS

    result = topics("set", *control, "--labels", "sports,politics,science")
    document = printed(result)
    assert document["version"] == "0:0"
    assert document["change"] == {"labels": ["sports", "politics", "science"]}
    assert document["entry"]["labels"] == ["sports", "politics", "science"]
    assert document["entry"]["output"] == names["input"] + ".scored", "the file's keys stay"
    assert "note" not in document
    assert f"written to {names['control']} at 0:0" in result.stderr

    assert printed(topics("get", *control)) == document
    assert control_records(bootstrap_servers, names["control"]) == [
        (names["input"].encode(), {"labels": ["sports", "politics", "science"]})
    ]


def test_set_lays_the_flags_over_the_record_in_force_and_a_file_replaces_it(
    topics: Topics, config: Path, tmp_path: Path
) -> None:
    control = ["--config", str(config)]
    printed(topics("set", *control, "--labels", "a,b"))
    document = printed(topics("set", *control, "--template", "It is about {}.", "--multi-label"))
    assert document["version"] == "0:1"
    assert document["change"] == {
        "labels": ["a", "b"],
        "hypothesis_template": "It is about {}.",
        "multi_label": True,
    }
    entry_file = tmp_path / "entry.yaml"
    entry_file.write_text(yaml.safe_dump({"labels": ["x", "y"], "threshold": 0.7}))
    document = printed(topics("set", *control, "--file", str(entry_file), "--single-label"))
    assert document["version"] == "0:2"
    assert document["change"] == {"labels": ["x", "y"], "threshold": 0.7, "multi_label": False}
    assert document["entry"]["hypothesis_template"] == "This example is {}.", "the file's again"


@pytest.mark.parametrize(
    ("args", "entry_keys", "reason"),
    [
        (["--labels", ""], None, "labels"),
        (["--template", "no placeholder"], None, 'must contain "{}"'),
        ([], {"routes": [{"none_above": 0.3, "topic": "no-such-topic"}]}, "does not exist"),
        ([], {"input": "another-topic", "labels": ["a"]}, "differs from the key"),
    ],
)
def test_an_invalid_record_exits_2_and_nothing_is_produced(
    topics: Topics,
    config: Path,
    tmp_path: Path,
    names: dict[str, str],
    bootstrap_servers: str,
    args: list[str],
    entry_keys: dict[str, Any] | None,
    reason: str,
) -> None:
    if entry_keys is not None:
        entry_file = tmp_path / "entry.yaml"
        entry_file.write_text(yaml.safe_dump(entry_keys))
        args = [*args, "--file", str(entry_file)]
    result = topics("set", "--config", str(config), *args)
    assert result.returncode == 2, result.stderr
    assert "the workers would refuse this record" in result.stderr
    assert reason in result.stderr
    assert result.stdout == ""
    assert control_records(bootstrap_servers, names["control"]) == []


def test_delete_writes_a_tombstone_and_the_files_entry_is_back(
    topics: Topics, config: Path, names: dict[str, str], bootstrap_servers: str
) -> None:
    control = ["--config", str(config)]
    printed(topics("set", *control, "--labels", "a,b,c"))
    result = topics("delete", *control)
    document = printed(result)
    assert (document["version"], document["change"]) == ("file", None)
    assert document["entry"]["labels"] == LABELS
    assert f"tombstone written to {names['control']} at 0:1" in result.stderr
    assert printed(topics("get", *control)) == document
    key = names["input"].encode()
    assert control_records(bootstrap_servers, names["control"]) == [
        (key, {"labels": ["a", "b", "c"]}),
        (key, None),
    ]
    # A set after the tombstone starts from the file's entry, not from the deleted record.
    assert printed(topics("set", *control, "--multi-label"))["change"] == {"multi_label": True}


def test_history_lists_every_record_of_the_topic_as_the_workers_judged_it(
    topics: Topics, config: Path, names: dict[str, str], bootstrap_servers: str
) -> None:
    control = ["--config", str(config)]
    key = names["input"].encode()
    started = datetime.now(UTC).replace(microsecond=0)
    printed(topics("set", *control, "--labels", "a,b"))
    produce(
        bootstrap_servers,
        names["control"],
        [b'{"labels": []}', b"not json", b'{"labels": ["other"]}'],
        keys=[key, key, b"another-topic"],
    )
    printed(topics("delete", *control))
    result = topics("history", *control)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [line[0] for line in lines] == ["0:0", "0:1", "0:2", "0:4"]
    verdicts = [line[2] for line in lines]
    assert verdicts[0] == verdicts[3] == "applied"
    assert verdicts[1].startswith("rejected: labels: ")
    assert verdicts[2].startswith("rejected: the value is not JSON: ")
    assert [line[3] for line in lines] == [
        orjson.dumps({"labels": ["a", "b"]}).decode(),
        '{"labels": []}',
        "not json",
        "tombstone",
    ]
    for line in lines:
        when = datetime.fromisoformat(line[1])
        assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0
        assert started <= when <= datetime.now(UTC)
    # The rejected records changed nothing: the tombstone put the file's entry back.
    assert printed(topics("get", *control))["version"] == "file"


def test_without_the_file_a_stand_in_validates_and_the_output_says_so(
    topics: Topics, config: Path, names: dict[str, str]
) -> None:
    document = printed(
        topics("set", "--template", "It is {}.", env={"ZSC_CONTROL_TOPIC": names["control"]})
    )
    assert document["version"] == "0:0"
    assert document["entry"] is None
    assert document["change"] == {"hypothesis_template": "It is {}."}
    assert "--config FILE checks records as the workers will" in document["note"]
    got = printed(topics("get", "--control-topic", names["control"]))
    assert (got["version"], got["change"]) == ("0:0", {"hypothesis_template": "It is {}."})
    # The stand-in refuses what is invalid on its own...
    refused = topics("set", "--control-topic", names["control"], "--labels", " ")
    assert refused.returncode == 2
    assert "checked without the configuration file" in refused.stderr
    # ...and --config judges with the file's entry: same version, the whole entry.
    with_file = printed(topics("get", "--config", str(config)))
    assert with_file["version"] == "0:0"
    assert with_file["entry"]["hypothesis_template"] == "It is {}."
    history = topics("history", "--control-topic", names["control"])
    assert history.stdout.count("\tapplied\t") == 1
    assert "checked without the configuration file" in history.stderr


def test_a_topic_the_file_does_not_have_and_a_missing_control_topic_exit_2(
    topics: Topics, tmp_path: Path, bootstrap_servers: str, names: dict[str, str]
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(
        yaml.safe_dump(
            {"control_topic": names["control"], "topics": [{**entry(names), "input": "other"}]}
        )
    )
    result = topics("get", "--config", str(other))
    assert result.returncode == 2
    assert "is not an input topic of the configuration file" in result.stderr
    result = topics("set", "--config", str(other), "--labels", "a")
    assert result.returncode == 2
    assert "input topics cannot be added at run time" in result.stderr

    result = topics("get", "--control-topic", names["control"] + "-missing")
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    result = topics("get")
    assert result.returncode == 2
    assert "no control topic" in result.stderr


def test_a_running_worker_serves_the_version_the_command_printed(
    topics: Topics,
    bootstrap_servers: str,
    create_topics: TopicFactory,
    names: dict[str, str],
    unique_name: NameFactory,
    config: Path,
) -> None:
    source = names["input"]
    sink = source + ".scored"
    create_topics([source, sink, source + ".dlq"])
    settings = make_settings(
        bootstrap_servers,
        unique_name("g"),
        [entry(names)],
        control_topic=names["control"],
    )
    with running(settings, FakeClassifier()) as worker:
        worker.wait_for_assignment()
        produce(bootstrap_servers, source, [b'{"text": "before"}'])
        [before] = read(bootstrap_servers, [sink], 1, settle_s=0)
        set_ = printed(
            topics("set", "--config", str(config), "--labels", "sports,politics,science")
        )
        deadline = time.monotonic() + SWITCH_TIMEOUT_S
        while config_versions(worker.worker.metrics).get(source) != set_["version"]:
            assert time.monotonic() < deadline, "the worker did not apply the record"
            time.sleep(0.05)
        produce(bootstrap_servers, source, [b'{"text": "after"}'])
        outputs = read(bootstrap_servers, [sink], 2, settle_s=0)
    classifications = {o.json()["text"]: o.json()["classification"] for o in outputs}
    assert before.json()["classification"]["config_version"] == "file"
    after = classifications["after"]
    assert after["config_version"] == set_["version"]
    assert sorted(after["labels"]) == ["politics", "science", "sports"]
