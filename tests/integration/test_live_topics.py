"""Live topic entries through the broker: workers switch configuration mid-stream, each
event scored with exactly one version (equal to the pipeline for it), versions never going
back within a partition; invalid records, restarts and tombstones."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from config.settings import Settings
from tests.integration.harness import (
    Output,
    RunningWorker,
    assert_scores_match,
    make_settings,
    pipeline_scores,
    produce,
    read,
    running,
)
from tests.texts import fortunes
from worker.activity import config_versions
from worker.errors import ConfigError
from worker.kafka.admin import ensure_topics
from worker.live_topics import version_of
from worker.nli.classifier import load_classifier

FILE_LABELS = ["sports", "politics", "technology"]
FILE_TEMPLATE = "This example is {}."
NEW_LABELS = ["love", "money", "work", "death"]
NEW_TEMPLATE = "This quote is about {}."
# How long every worker may take to serve a new version (the README's bound).
SWITCH_BOUND_S = 5.0


@pytest.fixture(scope="module")
def bart(tiny_bart_dir: str):
    return load_classifier(str(tiny_bart_dir), "cpu", "float32")


def topics_for(bootstrap_servers: str, partitions: int) -> tuple[str, str, str, str]:
    """A new input, output, dead-letter topic, and a compacted control topic."""
    base = f"t-{uuid.uuid4().hex[:10]}"
    source, sink, dlq, control = (f"{base}.{s}" for s in ("in", "out", "dlq", "control"))
    ensure_topics(bootstrap_servers, [source, sink, dlq], partitions)
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    compacted = NewTopic(control, 1, 1, config={"cleanup.policy": "compact"})
    admin.create_topics([compacted])[control].result(30)
    return source, sink, dlq, control


def settings_for(
    bootstrap_servers: str, source: str, sink: str, dlq: str, control: str, model: str, **more: Any
) -> Settings:
    entry = {
        "input": source,
        "output": sink,
        "dead_letter": dlq,
        "labels": FILE_LABELS,
        "hypothesis_template": FILE_TEMPLATE,
    }
    return make_settings(
        bootstrap_servers,
        f"g-{uuid.uuid4().hex}",
        [entry],
        control_topic=control,
        model={"name": model},
        **more,
    )


def as_instance(settings: Settings, instance_id: str) -> Settings:
    """The settings with a static group member id of their own."""
    consumer = {**settings.kafka.consumer, "group.instance.id": instance_id}
    kafka = settings.kafka.model_copy(update={"consumer": consumer})
    return settings.model_copy(update={"kafka": kafka})


def send_control(bootstrap_servers: str, control: str, topic: str, value: bytes | None) -> str:
    """Produce a control record; its configuration version."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True})
    delivered: list[Any] = []
    producer.produce(
        control, value, key=topic.encode(), on_delivery=lambda e, m: delivered.append(m)
    )
    assert producer.flush(30) == 0
    [message] = delivered
    assert message.error() is None
    return version_of(message.partition(), message.offset())


def events(texts: Sequence[str], start: int) -> list[bytes]:
    return [orjson.dumps({"id": start + i, "text": t}) for i, t in enumerate(texts)]


def wait_for_version(
    workers: Iterable[RunningWorker], topic: str, version: str, since: float | None = None
) -> float:
    """Seconds from `since` (default: now) until every worker serves `version` for `topic`;
    fails past the bound."""
    started = time.monotonic() if since is None else since
    pending = list(workers)
    while pending:
        pending = [w for w in pending if config_versions(w.worker.metrics).get(topic) != version]
        elapsed = time.monotonic() - started
        assert elapsed <= SWITCH_BOUND_S, f"not every worker serves {version} after {elapsed:.1f} s"
        time.sleep(0.05)
    return time.monotonic() - started


def by_id(outputs: list[Output]) -> dict[int, dict[str, Any]]:
    results = {o.json()["id"]: o.json() for o in outputs}
    assert len(results) == len(outputs), "one output per event"
    return results


def assert_monotonic(results: Iterable[dict[str, Any]], order: list[str]) -> None:
    """Within each partition, in offset order, versions follow `order` and never go back."""
    seen: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for event in results:
        source = event["classification"]["source"]
        seen[source["partition"]].append(
            (source["offset"], event["classification"]["config_version"])
        )
    for partition, versions in seen.items():
        ranks = [order.index(version) for _, version in sorted(versions)]
        assert ranks == sorted(ranks), f"partition {partition} went back: {sorted(versions)}"


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_two_workers_switch_mid_stream_each_event_scored_by_the_version_it_names(
    guarantee: str, request: pytest.FixtureRequest, bart, tiny_bart_dir: str
) -> None:
    bootstrap_servers = request.getfixturevalue(
        "exactly_once_bootstrap_servers" if guarantee == "exactly-once" else "bootstrap_servers"
    )
    source, sink, dlq, control = topics_for(bootstrap_servers, 4)
    settings = settings_for(
        bootstrap_servers,
        source,
        sink,
        dlq,
        control,
        str(tiny_bart_dir),
        processing_guarantee=guarantee,
    )
    texts = fortunes(90)
    second = load_classifier(str(tiny_bart_dir), "cpu", "float32")
    # Two workers of one process: their transactional ids differ by instance id.
    instances = [as_instance(settings, f"w{n}") for n in (1, 2)]
    with running(instances[0], bart) as one, running(instances[1], second) as two:
        one.wait_for_assignment()
        two.wait_for_assignment()
        produce(bootstrap_servers, source, events(texts[:40], 0))
        change = {"labels": NEW_LABELS, "hypothesis_template": NEW_TEMPLATE, "multi_label": True}
        version = send_control(bootstrap_servers, control, source, orjson.dumps(change))
        sent_at = time.monotonic()
        # Events keep flowing while the workers switch.
        produce(bootstrap_servers, source, events(texts[40:60], 40))
        switch_s = wait_for_version([one, two], source, version, since=sent_at)
        produce(bootstrap_servers, source, events(texts[60:], 60))
        outputs = read(bootstrap_servers, [sink, dlq], len(texts))
    print(f"both workers serve {version} {switch_s:.2f} s after the control record")
    results = by_id(outputs)
    assert set(results) == set(range(len(texts))), "nothing lost"
    assert all(o.topic == sink for o in outputs)
    assert {results[i]["classification"]["config_version"] for i in range(60, 90)} == {version}
    assert {r["classification"]["config_version"] for r in results.values()} <= {"file", version}
    assert_monotonic(results.values(), ["file", version])
    old = pipeline_scores(tiny_bart_dir, texts, FILE_LABELS, FILE_TEMPLATE, False)
    new = pipeline_scores(tiny_bart_dir, texts, NEW_LABELS, NEW_TEMPLATE, True)
    for i, event in results.items():
        result = event["classification"]
        if result["config_version"] == "file":
            assert result["multi_label"] is False
            assert result["hypothesis_template"] == FILE_TEMPLATE
            assert_scores_match(result, old[i])
        else:
            assert result["multi_label"] is True
            assert result["hypothesis_template"] == NEW_TEMPLATE
            assert_scores_match(result, new[i])


def test_a_worker_joining_after_changes_serves_the_latest_and_no_partition_goes_back(
    bootstrap_servers: str, bart, tiny_bart_dir: str
) -> None:
    source, sink, dlq, control = topics_for(bootstrap_servers, 4)
    settings = settings_for(bootstrap_servers, source, sink, dlq, control, str(tiny_bart_dir))
    texts = fortunes(120)
    second = load_classifier(str(tiny_bart_dir), "cpu", "float32")
    with running(settings, bart) as one:
        one.wait_for_assignment()
        produce(bootstrap_servers, source, events(texts[:30], 0))
        first = send_control(bootstrap_servers, control, source, b'{"labels": ["love", "money"]}')
        wait_for_version([one], source, first)
        produce(bootstrap_servers, source, events(texts[30:60], 30))
        latest = send_control(bootstrap_servers, control, source, b'{"labels": ["work", "death"]}')
        wait_for_version([one], source, latest)
        # The newcomer takes partitions over from a worker that served `latest` on them.
        with running(settings, second) as two:
            two.wait_for_assignment()
            assert config_versions(two.worker.metrics)[source] == latest
            produce(bootstrap_servers, source, events(texts[60:], 60))
            outputs = read(bootstrap_servers, [sink, dlq], len(texts))
            assert two.partitions() and one.partitions()
    results = by_id(outputs)
    assert set(results) == set(range(len(texts)))
    assert {results[i]["classification"]["config_version"] for i in range(60, 120)} == {latest}
    assert_monotonic(results.values(), ["file", first, latest])
    for event in results.values():
        result = event["classification"]
        labels = {"file": FILE_LABELS, first: ["love", "money"], latest: ["work", "death"]}
        assert sorted(result["labels"]) == sorted(labels[result["config_version"]])


def test_an_invalid_record_is_ignored_and_a_restarted_worker_starts_with_the_latest(
    bootstrap_servers: str, bart, tiny_bart_dir: str
) -> None:
    source, sink, dlq, control = topics_for(bootstrap_servers, 2)
    settings = settings_for(bootstrap_servers, source, sink, dlq, control, str(tiny_bart_dir))
    texts = fortunes(40)
    with running(settings, bart) as worker:
        worker.wait_for_assignment()
        applied = send_control(bootstrap_servers, control, source, b'{"labels": ["love", "work"]}')
        wait_for_version([worker], source, applied)
        send_control(bootstrap_servers, control, source, b'{"labels": []}')
        send_control(bootstrap_servers, control, source, b"{not json")
        produce(bootstrap_servers, source, events(texts[:20], 0))
        outputs = read(bootstrap_servers, [sink, dlq], 20)
        rejected = worker.worker.metrics.control_records_rejected._value.get()
    assert rejected == 2
    assert {o.json()["classification"]["config_version"] for o in outputs} == {applied}
    # A restart reads the whole control topic before it reads an event.
    with running(settings, bart) as restarted:
        restarted.wait_for_assignment()
        assert config_versions(restarted.worker.metrics)[source] == applied
        produce(bootstrap_servers, source, events(texts[20:], 20))
        outputs = read(bootstrap_servers, [sink, dlq], 40)
    results = by_id(outputs)
    assert set(results) == set(range(40))
    assert {r["classification"]["config_version"] for r in results.values()} == {applied}
    assert all(sorted(r["classification"]["labels"]) == ["love", "work"] for r in results.values())


def test_a_tombstone_puts_the_files_entry_back(
    bootstrap_servers: str, bart, tiny_bart_dir: str
) -> None:
    source, sink, dlq, control = topics_for(bootstrap_servers, 1)
    settings = settings_for(bootstrap_servers, source, sink, dlq, control, str(tiny_bart_dir))
    texts = fortunes(20)
    with running(settings, bart) as worker:
        worker.wait_for_assignment()
        changed = send_control(bootstrap_servers, control, source, b'{"labels": ["love", "work"]}')
        wait_for_version([worker], source, changed)
        produce(bootstrap_servers, source, events(texts[:10], 0))
        read(bootstrap_servers, [sink], 10)
        send_control(bootstrap_servers, control, source, None)
        wait_for_version([worker], source, "file")
        produce(bootstrap_servers, source, events(texts[10:], 10))
        outputs = read(bootstrap_servers, [sink, dlq], 20)
    results = by_id(outputs)
    expected = pipeline_scores(tiny_bart_dir, texts[10:], FILE_LABELS, FILE_TEMPLATE, False)
    for i in range(10, 20):
        result = results[i]["classification"]
        assert result["config_version"] == "file"
        assert_scores_match(result, expected[i - 10])
    assert {results[i]["classification"]["config_version"] for i in range(10)} == {changed}


def test_a_missing_control_topic_stops_start_up_saying_so(bootstrap_servers: str, bart) -> None:
    source, sink, dlq, _ = topics_for(bootstrap_servers, 1)
    settings = settings_for(bootstrap_servers, source, sink, dlq, f"absent-{uuid.uuid4().hex}", "m")
    worker = RunningWorker(settings, bart).start()
    with pytest.raises(ConfigError, match=r"control_topic: topic 'absent-\w+' does not exist"):
        worker.stop()
