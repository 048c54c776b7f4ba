"""`zsc-worker topics` without a broker: the record built from the flags and --file, the
settings with and without the configuration file, and what is printed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import yaml

from config.kafka import DEFAULT_BOOTSTRAP
from config.topics import TopicSettings
from worker import cli, errors
from worker.live_topics import InForce, LiveTopics
from worker.topics_command import (
    STAND_IN_OUTPUT_SUFFIX,
    WITHOUT_CONFIG,
    Judged,
    command_settings,
    flag_keys,
    in_force_document,
    new_record,
    read_entry_file,
    stand_in_entry,
)

ENTRY = {"input": "posts", "output": "posts.classified", "labels": ["sports", "politics"]}


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ZSC_BOOTSTRAP_SERVERS", "ZSC_CONTROL_TOPIC"):
        monkeypatch.delenv(name, raising=False)


def write_config(tmp_path: Path, **top: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**top, "topics": [ENTRY]}))
    return path


def test_the_flags_give_only_the_keys_they_set() -> None:
    assert flag_keys(None, None, None) == {}
    assert flag_keys(" sports, politics ,,science", None, None) == {
        "labels": ["sports", "politics", "science"]
    }
    assert flag_keys(None, "It is {}.", False) == {
        "hypothesis_template": "It is {}.",
        "multi_label": False,
    }
    # Empty labels stay empty: the workers' judgement refuses them, not the flag parsing.
    assert flag_keys(" , ", None, True) == {"labels": [], "multi_label": True}


def test_set_lays_the_flags_over_the_record_in_force() -> None:
    in_force = {"labels": ["a", "b"], "hypothesis_template": "It is {}."}
    assert new_record(in_force, {"labels": ["a", "b", "c"]}) == {
        "labels": ["a", "b", "c"],
        "hypothesis_template": "It is {}.",
    }
    assert in_force == {"labels": ["a", "b"], "hypothesis_template": "It is {}."}
    # After a tombstone (or with no record yet) the flags alone make the record.
    assert new_record(None, {"multi_label": True}) == {"multi_label": True}


def test_set_with_a_file_replaces_the_record_in_force() -> None:
    in_force = {"labels": ["a"], "threshold": 0.9}
    entry = {"labels": ["x", "y"], "multi_label": True}
    assert new_record(in_force, {}, entry) == entry
    assert new_record(in_force, {"multi_label": False}, entry) == {
        "labels": ["x", "y"],
        "multi_label": False,
    }


def test_an_entry_file_is_one_mapping(tmp_path: Path) -> None:
    path = tmp_path / "entry.yaml"
    path.write_text("labels: [a, b]\nhypothesis_template: 'It is {}.'\n")
    assert read_entry_file(path) == {"labels": ["a", "b"], "hypothesis_template": "It is {}."}
    path.write_text("- labels: [a]\n")
    with pytest.raises(errors.ConfigError, match="mapping"):
        read_entry_file(path)
    path.write_text("labels: [a\n")
    with pytest.raises(errors.ConfigError, match="not valid YAML"):
        read_entry_file(path)
    with pytest.raises(errors.ConfigError, match="cannot read"):
        read_entry_file(tmp_path / "missing.yaml")


def test_the_stand_in_entry_validates_what_a_record_gives() -> None:
    entry = TopicSettings.model_validate(stand_in_entry("posts"))
    assert entry.output == "posts" + STAND_IN_OUTPUT_SUFFIX
    live = LiveTopics([entry], "control", lambda _name: True)
    assert live.judge(b"posts", orjson.dumps({"multi_label": True})).entry.multi_label
    with pytest.raises(errors.ControlRecordError, match="labels"):
        live.judge(b"posts", orjson.dumps({"labels": []}))
    with pytest.raises(errors.ControlRecordError, match="hypothesis_template"):
        live.judge(b"posts", orjson.dumps({"hypothesis_template": "no placeholder"}))


def test_settings_without_the_file_come_from_the_flags_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = command_settings("posts", None, None, "control")
    assert settings.kafka.bootstrap_servers == DEFAULT_BOOTSTRAP
    assert settings.control_topic == "control"
    assert [t.model_dump() for t in settings.topics] == [
        TopicSettings.model_validate(stand_in_entry("posts")).model_dump()
    ]
    monkeypatch.setenv("ZSC_BOOTSTRAP_SERVERS", "env:9092")
    monkeypatch.setenv("ZSC_CONTROL_TOPIC", "env-control")
    settings = command_settings("posts", None, None, None)
    assert (settings.kafka.bootstrap_servers, settings.control_topic) == ("env:9092", "env-control")
    settings = command_settings("posts", None, "flag:9092", "flag-control")
    assert (settings.kafka.bootstrap_servers, settings.control_topic) == (
        "flag:9092",
        "flag-control",
    )


def test_settings_with_the_file_keep_its_entries_and_security(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        kafka={"bootstrap_servers": "file:9092", "properties": {"security.protocol": "SSL"}},
        control_topic="file-control",
    )
    settings = command_settings("posts", config, None, None)
    assert [t.input for t in settings.topics] == ["posts"]
    assert settings.topics[0].output == "posts.classified"
    assert settings.kafka.properties == {"security.protocol": "SSL"}
    assert settings.control_topic == "file-control"
    settings = command_settings("posts", config, "flag:9092", "flag-control")
    assert (settings.kafka.bootstrap_servers, settings.control_topic) == (
        "flag:9092",
        "flag-control",
    )


def test_no_control_topic_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="--control-topic"):
        command_settings("posts", None, None, None)
    with pytest.raises(errors.ConfigError, match="--control-topic"):
        command_settings("posts", write_config(tmp_path), None, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set"], "give --labels"),
        (["get", "--labels", "a"], "are for `set`"),
        (["delete", "--single-label"], "are for `set`"),
        (["history", "--file", "entry.yaml"], "are for `set`"),
        (["get", "--control-topic", ""], "no control topic"),
    ],
)
def test_the_command_refuses_bad_arguments_before_it_connects(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens on port 1: a connection attempt would fail with exit 1, not 2.
    common = ["--topic", "posts", "--bootstrap-servers", "127.0.0.1:1"]
    assert cli.main(["topics", *args, *common]) == cli.EXIT_CONFIG
    assert message in capsys.readouterr().err


def test_the_entry_in_force_is_printed_only_where_the_file_gives_it() -> None:
    entry = TopicSettings.model_validate(ENTRY)
    in_force = InForce(entry, "0:7", {"labels": ["sports", "politics"]})
    document = in_force_document("posts", in_force, with_config=True)
    assert document == {
        "topic": "posts",
        "version": "0:7",
        "entry": entry.model_dump(mode="json"),
        "change": {"labels": ["sports", "politics"]},
    }
    orjson.dumps(document)  # JSON all through
    document = in_force_document("posts", InForce(entry, "file"), with_config=False)
    assert document == {
        "topic": "posts",
        "version": "file",
        "entry": None,
        "change": None,
        "note": WITHOUT_CONFIG,
    }


def test_a_history_line_has_version_time_verdict_and_value() -> None:
    when = datetime(2026, 12, 6, 9, 30, 1, 250_000, tzinfo=UTC)
    applied = Judged("0:3", when, b'{"labels":["a"]}', "applied")
    assert applied.line() == '0:3\t2026-12-06T09:30:01.250+00:00\tapplied\t{"labels":["a"]}'
    tombstone = Judged("0:4", None, None, "rejected: no such topic")
    assert tombstone.line() == "0:4\t-\trejected: no such topic\ttombstone"
    pretty = Judged("0:5", None, b'{\n\t"labels": ["a  b"]\r\n}', "applied")
    assert pretty.line() == '0:5\t-\tapplied\t{ "labels": ["a  b"] }'
