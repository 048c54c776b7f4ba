"""Control records judged and applied: the file's entry, changes laid over it, tombstones,
and every kind of invalid record changing nothing."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from config.topics import TopicSettings
from worker.errors import ControlRecordError
from worker.live_topics import LiveTopics, parse_record, version_of

FILE_TOPICS = [
    TopicSettings(
        input="posts",
        output="posts.out",
        labels=["sports", "politics"],
        threshold=0.7,
        text_field="body",
    ),
    TopicSettings(input="mail", output="mail.out", labels=["spam", "ham"]),
]
EXISTING = {"posts.out", "mail.out", "posts.dlq", "mail.dlq", "alerts"}


def live() -> LiveTopics:
    return LiveTopics(FILE_TOPICS, "control", lambda name: name in EXISTING)


def record(change: dict[str, Any]) -> bytes:
    return orjson.dumps(change)


def test_each_topic_starts_with_the_files_entry() -> None:
    topics = live()
    assert topics.topics == ["posts", "mail"]
    assert topics["posts"].entry == FILE_TOPICS[0]
    assert topics["posts"].version == "file" and topics["posts"].change is None


def test_a_record_lays_its_keys_over_the_files_entry() -> None:
    topics = live()
    change = {"labels": ["sports", "music"], "multi_label": True}
    in_force = topics.apply(b"posts", record(change), version_of(0, 7))
    assert in_force.version == "0:7" and in_force.change == change
    entry = topics["posts"].entry
    assert entry.label_names == ["sports", "music"] and entry.multi_label
    # Keys the record leaves out keep the file's values.
    assert (entry.threshold, entry.text_field, entry.output) == (0.7, "body", "posts.out")
    assert topics["mail"].version == "file"


def test_a_later_record_replaces_the_earlier_one_rather_than_adding_to_it() -> None:
    topics = live()
    topics.apply(b"posts", record({"labels": ["music"], "threshold": 0.2}), "0:1")
    topics.apply(b"posts", record({"hypothesis_template": "It is about {}."}), "0:2")
    entry = topics["posts"].entry
    assert entry.hypothesis_template == "It is about {}."
    assert entry.label_names == ["sports", "politics"] and entry.threshold == 0.7


def test_a_tombstone_puts_the_files_entry_back() -> None:
    topics = live()
    topics.apply(b"posts", record({"labels": ["music"]}), "0:1")
    in_force = topics.apply(b"posts", None, "0:2")
    assert in_force.version == "file" and topics["posts"].entry == FILE_TOPICS[0]


def test_a_record_may_name_its_input_when_it_is_the_key() -> None:
    topics = live()
    topics.apply(b"posts", record({"input": "posts", "labels": ["music"]}), "0:3")
    assert topics["posts"].entry.label_names == ["music"]


def test_a_route_to_an_existing_topic_is_applied() -> None:
    topics = live()
    routes = [{"topic": "alerts", "label": "sports", "min_score": 0.9}]
    topics.apply(b"posts", record({"routes": routes}), "0:4")
    assert topics["posts"].entry.extra_outputs == ["alerts"]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"posts", b"{not json", "the value is not JSON"),
        (b"posts", b'["sports"]', "must be a JSON object"),
        (b"posts", record({"colour": "red"}), "colour: Extra inputs are not permitted"),
        (b"posts", record({"labels": []}), "labels: List should have at least 1 item"),
        (b"posts", record({"labels": ["a", "a"]}), "labels must be distinct"),
        (b"posts", record({"hypothesis_template": "No label."}), 'must contain "{}"'),
        (b"posts", record({"multi_label": "often"}), "multi_label: Input should be a valid"),
        (b"posts", record({"output": "mail"}), "writes to input topics ['mail']"),
        (b"posts", record({"dead_letter": "posts"}), "writes to input topics ['posts']"),
        (b"posts", record({"output": "control"}), "writes to the control topic"),
        (
            b"posts",
            record({"routes": [{"topic": "nowhere", "label": "sports", "min_score": 0.5}]}),
            "topic 'nowhere' does not exist",
        ),
        (b"posts", record({"output": "posts.new"}), "topic 'posts.new' does not exist"),
        (b"posts", record({"input": "mail"}), "differs from the key"),
        (b"posts", record({"format": "avro"}), "format cannot change at run time"),
        (b"news", record({"labels": ["a"]}), "not an input topic of the configuration file"),
        (None, record({"labels": ["a"]}), "no key"),
        (b"\xff", record({"labels": ["a"]}), "not UTF-8"),
    ],
)
def test_an_invalid_record_changes_nothing_and_says_why(
    key: bytes | None, value: bytes, reason: str
) -> None:
    topics = live()
    topics.apply(b"posts", record({"labels": ["music"]}), "0:1")
    before = topics["posts"]
    with pytest.raises(ControlRecordError, match=re.escape(reason)):
        topics.apply(key, value, "0:2")
    assert topics["posts"] is before


def test_judging_changes_nothing() -> None:
    topics = live()
    change = topics.judge(b"posts", record({"labels": ["music"]}))
    assert change.topic == "posts" and change.entry.label_names == ["music"]
    assert topics["posts"].version == "file"


def test_parse_record_gives_the_topic_and_its_keys() -> None:
    assert parse_record(b"posts", b'{"labels": ["a"]}') == ("posts", {"labels": ["a"]})
    assert parse_record(b"posts", None) == ("posts", None)


MODEL_FIXED = "model cannot be changed at run time; restart with the file changed"


def test_a_record_may_not_change_a_topics_model_but_may_repeat_it() -> None:
    spam = TopicSettings(input="mail", output="mail.out", labels=["spam", "ham"], model="dir/spam")
    topics = LiveTopics([FILE_TOPICS[0], spam], "control", lambda name: name in EXISTING)
    for key, change in [
        (b"posts", {"model": "dir/big"}),
        (b"mail", {"model": "dir/big"}),
        (b"mail", {"model": {"name": "dir/spam", "dtype": "int8"}}),
        (b"mail", {"model": None}),
    ]:
        with pytest.raises(ControlRecordError, match=re.escape(MODEL_FIXED)):
            topics.apply(key, record(change), "0:1")
    assert topics["mail"].version == "file"
    # The file's model again, in full or as shorthand, changes no model.
    topics.apply(b"mail", record({"model": {"name": "dir/spam"}, "labels": ["spam"]}), "0:2")
    assert topics["mail"].entry.label_names == ["spam"]
    assert topics["mail"].entry.model == spam.model
