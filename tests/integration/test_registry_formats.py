"""Avro and JSON Schema topics against a real Apache Kafka and a real registry (Apicurio).

Records are written with confluent-kafka's own serializers and outputs read with
its own deserializers, as users of the worker would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.brokers.apicurio import ApicurioRegistry, url_at
from tests.integration.faults.proxy import FlakyProxy
from tests.integration.harness import (
    SESSION_TIMEOUT_MS,
    Output,
    assert_scores_match,
    committed,
    make_settings,
    pipeline_scores,
    produce,
    read,
    running,
)
from tests.texts import fortunes
from worker import serde
from worker.embedded.base import free_loopback_ports
from worker.kafka.admin import ensure_topics
from worker.nli.classifier import load_classifier
from worker.nli.fake import FakeClassifier
from worker.outputs import ERROR_TYPE

LABELS = ["computers", "love", "food", "politics"]
TEMPLATE = "This example is {}."
TOPIC_SUBJECT = {"subject.name.strategy.type": "TOPIC"}
# How long a registry outage lasts in the test: several of the worker's retries
# (each a 2 s timeout, then a backoff of up to 5 s).
OUTAGE_S = 12.0

POST = {
    "type": "record",
    "name": "Post",
    "namespace": "example.posts",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "text", "type": ["null", "string"], "default": None},
        {"name": "score", "type": "double"},
        {"name": "raw", "type": "bytes"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {
            "name": "author",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Person",
                    "fields": [{"name": "name", "type": "string"}],
                },
                {"type": "record", "name": "Bot", "fields": [{"name": "name", "type": "string"}]},
            ],
            "default": None,
        },
    ],
}
POST_JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Post",
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "text": {"type": "string"},
        "meta": {"type": "object", "properties": {"lang": {"type": "string"}}},
    },
    "required": ["id", "text"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def bart(tiny_bart_dir: str):
    return load_classifier(str(tiny_bart_dir), "cpu", "float32")


def fresh_topics(bootstrap_servers: str, partitions: int = 1) -> tuple[str, str, str]:
    base = f"sr-{uuid.uuid4().hex[:10]}"
    names = (f"{base}.in", f"{base}.out", f"{base}.dlq")
    ensure_topics(bootstrap_servers, list(names), partitions)
    return names


def topic_entry(source: str, sink: str, dlq: str, fmt: str) -> dict[str, Any]:
    return {"input": source, "output": sink, "dead_letter": dlq, "labels": LABELS, "format": fmt}


def avro_serializer(client: SchemaRegistryClient, schema: dict[str, Any]) -> AvroSerializer:
    return AvroSerializer(client, json.dumps(schema), conf=TOPIC_SUBJECT)


def post(i: int, text: str) -> dict[str, Any]:
    author = ("example.posts.Bot", {"name": f"bot{i}"}) if i % 2 else None
    return {
        "id": i,
        "text": text,
        "score": i / 3,
        "raw": bytes([i % 256, 0, 255]),
        "tags": [f"t{i}"],
        "author": author,
    }


def values(topic: str) -> SerializationContext:
    return SerializationContext(topic, MessageField.VALUE)


def decode_all(deserializer: Any, outputs: list[Output]) -> dict[int, dict[str, Any]]:
    """The outputs by input id, decoded as a user's consumer would."""
    decoded = [deserializer(o.value, values(o.topic)) for o in outputs]
    return {event["id"]: event for event in decoded}


def test_avro_topic_end_to_end_matches_the_pipeline(
    bootstrap_servers: str, schema_registry: ApicurioRegistry, bart, tiny_bart_dir: str
) -> None:
    source, sink, dlq = fresh_topics(bootstrap_servers, partitions=2)
    client = SchemaRegistryClient({"url": schema_registry.url})
    serializer = avro_serializer(client, POST)
    texts = fortunes(24)
    produce(
        bootstrap_servers,
        source,
        [serializer(post(i, t), values(source)) for i, t in enumerate(texts)],
        keys=[f"k{i}".encode() for i in range(len(texts))],
        headers=[[("trace", f"tr{i}".encode())] for i in range(len(texts))],
    )
    settings = make_settings(
        bootstrap_servers,
        f"g-{uuid.uuid4().hex}",
        [topic_entry(source, sink, dlq, "avro")],
        schema_registry={"url": schema_registry.url},
    )
    with running(settings, bart):
        outputs = read(bootstrap_servers, [sink, dlq], len(texts))

    assert Counter(o.topic for o in outputs) == {sink: len(texts)}
    registered = client.get_latest_version(f"{sink}-value").schema
    assert registered.schema_str is not None
    names = [field["name"] for field in json.loads(registered.schema_str)["fields"]]
    assert names == [*(field["name"] for field in POST["fields"]), "classification"]
    # A user's deserializer, reading union branches back by name to see they were kept.
    deserializer = AvroDeserializer(client, return_record_name=True, conf=TOPIC_SUBJECT)
    seen = set()
    expected = pipeline_scores(tiny_bart_dir, texts, LABELS, TEMPLATE, False)
    for output in outputs:
        event = deserializer(output.value, values(sink))
        i = event["id"]
        seen.add(i)
        assert output.key == f"k{i}".encode() and output.headers == {"trace": f"tr{i}".encode()}
        assert {k: v for k, v in event.items() if k != "classification"} == post(i, texts[i])
        result = event["classification"]
        assert result["source"]["topic"] == source and result["config_version"] == "file"
        assert result["hypothesis_template"] == TEMPLATE and result["chunks"] is None
        assert_scores_match(result, expected[i])
    assert seen == set(range(len(texts)))


def test_json_schema_topic_end_to_end_matches_the_pipeline(
    bootstrap_servers: str, schema_registry: ApicurioRegistry, bart, tiny_bart_dir: str
) -> None:
    source, sink, dlq = fresh_topics(bootstrap_servers)
    client = SchemaRegistryClient({"url": schema_registry.url})
    serializer = JSONSerializer(json.dumps(POST_JSON_SCHEMA), client, conf=TOPIC_SUBJECT)
    texts = fortunes(12)
    events = [{"id": i, "text": t, "meta": {"lang": "en"}} for i, t in enumerate(texts)]
    produce(bootstrap_servers, source, [serializer(e, values(source)) for e in events])
    settings = make_settings(
        bootstrap_servers,
        f"g-{uuid.uuid4().hex}",
        [topic_entry(source, sink, dlq, "json_schema")],
        schema_registry={"url": schema_registry.url},
    )
    with running(settings, bart):
        outputs = read(bootstrap_servers, [sink, dlq], len(texts))

    assert Counter(o.topic for o in outputs) == {sink: len(texts)}
    registered = client.get_latest_version(f"{sink}-value").schema.schema_str
    assert registered is not None and "classification" in json.loads(registered)["required"]
    deserializer = JSONDeserializer(None, schema_registry_client=client, conf=TOPIC_SUBJECT)
    decoded = decode_all(deserializer, outputs)
    expected = pipeline_scores(tiny_bart_dir, texts, LABELS, TEMPLATE, False)
    for i, event in decoded.items():
        assert {k: v for k, v in event.items() if k != "classification"} == events[i]
        assert_scores_match(event["classification"], expected[i])


def test_every_kind_of_bad_record_is_dead_lettered_byte_for_byte(
    bootstrap_servers: str, schema_registry: ApicurioRegistry
) -> None:
    avro_in, avro_out, avro_dlq = fresh_topics(bootstrap_servers)
    json_in, json_out, json_dlq = fresh_topics(bootstrap_servers)
    client = SchemaRegistryClient({"url": schema_registry.url})
    good = avro_serializer(client, POST)(post(1, "a good post"), values(avro_in))
    without_text = {**POST, "name": "NoText", "fields": POST["fields"][:1]}
    classification = {"name": "classification", "type": "string"}
    taken = {**POST, "name": "Taken", "fields": [*POST["fields"], classification]}
    # Schemas of their own, registered under subjects of their own.
    no_text = avro_serializer(client, without_text)({"id": 2}, values(f"{avro_in}-b"))
    null_text = avro_serializer(client, POST)({**post(3, ""), "text": None}, values(avro_in))
    clash_value = {**post(4, "x"), "classification": "mine"}
    clash = avro_serializer(client, taken)(clash_value, values(f"{avro_in}-c"))
    bad_avro = {
        b"plain json, no magic byte": serde.INVALID_WIRE_FORMAT,
        b"\x00\x00": serde.INVALID_WIRE_FORMAT,
        b"\x00\x7f\xff\xff\xf0\x02\x04": serde.UNKNOWN_SCHEMA,
        good[:-4]: serde.INVALID_AVRO,
        no_text: serde.MISSING_TEXT,
        null_text: serde.MISSING_TEXT,
        clash: serde.OUTPUT_REJECTED,
    }
    json_serializer = JSONSerializer(json.dumps(POST_JSON_SCHEMA), client, conf=TOPIC_SUBJECT)
    json_good = json_serializer({"id": 5, "text": "fine"}, values(json_in))
    bad_json = {
        json_good[:5] + b'{"id": "five", "text": "wrong type"}': serde.INVALID_JSON_SCHEMA,
        json_good[:-3]: serde.INVALID_JSON_SCHEMA,
        b'{"id": 6, "text": "plain json"}': serde.INVALID_WIRE_FORMAT,
    }
    produce(bootstrap_servers, avro_in, [good, *bad_avro, good], keys=[b"g0", *bad_avro, b"g1"])
    produce(bootstrap_servers, json_in, [*bad_json, json_good], keys=[*bad_json, b"g2"])
    settings = make_settings(
        bootstrap_servers,
        f"g-{uuid.uuid4().hex}",
        [
            topic_entry(avro_in, avro_out, avro_dlq, "avro"),
            topic_entry(json_in, json_out, json_dlq, "json_schema"),
        ],
        schema_registry={"url": schema_registry.url},
    )
    expected = len(bad_avro) + len(bad_json) + 3
    with running(settings, FakeClassifier()):
        outputs = read(bootstrap_servers, [avro_out, avro_dlq, json_out, json_dlq], expected)

    assert Counter(o.topic for o in outputs) == {
        avro_out: 2,
        json_out: 1,
        avro_dlq: len(bad_avro),
        json_dlq: len(bad_json),
    }
    for output in outputs:
        if output.topic in (avro_dlq, json_dlq):
            # The key is the value here: the record came back unchanged, key and value.
            assert output.key == output.value
            reasons = bad_avro if output.topic == avro_dlq else bad_json
            assert output.headers[ERROR_TYPE] == reasons[output.value].encode()


@pytest.mark.parametrize("outage", ["paused", "cut off"])
def test_a_registry_outage_mid_stream_holds_records_and_loses_nothing(
    bootstrap_servers: str, schema_registry: ApicurioRegistry, outage: str
) -> None:
    """Paused: the registry's process stopped, requests time out. Cut off: every connection
    through a proxy closed as soon as it opens (tests.integration.faults.proxy), as a
    registry behind a failed network looks; its schemas are still there when it is back.
    A plain JSON topic of the same worker needs no registry: it flows meanwhile."""
    source, sink, dlq = fresh_topics(bootstrap_servers)
    plain_source, plain_sink, plain_dlq = fresh_topics(bootstrap_servers)
    client = SchemaRegistryClient({"url": schema_registry.url})
    before = avro_serializer(client, POST)
    # A second version of the schema, registered now but new to the worker: its
    # records need the registry while it is away.
    lang = {"name": "lang", "type": "string", "default": "en"}
    evolved = {**POST, "fields": [*POST["fields"], lang]}
    during = avro_serializer(client, evolved)
    first = [before(post(i, f"before the outage {i}"), values(source)) for i in range(10)]
    second = [
        during({**post(i, f"during the outage {i}"), "lang": "de"}, values(source))
        for i in range(10, 30)
    ]
    group = f"g-{uuid.uuid4().hex}"
    [gate_port] = free_loopback_ports(1)
    gate = FlakyProxy(gate_port, schema_registry.port)
    settings = make_settings(
        bootstrap_servers,
        group,
        [
            topic_entry(source, sink, dlq, "avro"),
            topic_entry(plain_source, plain_sink, plain_dlq, "json"),
        ],
        schema_registry={"url": url_at(gate_port)},
    )
    plain = [orjson.dumps({"id": i, "text": f"plain {i}"}) for i in range(10)]
    with gate, running(settings, FakeClassifier()) as worker:
        produce(bootstrap_servers, source, first)
        assert len(read(bootstrap_servers, [sink], len(first), settle_s=0)) == len(first)
        if outage == "paused":
            schema_registry.pause()
        else:
            gate.cut()
        produce(bootstrap_servers, source, second)
        # Held records hold only their own partition.
        produce(bootstrap_servers, plain_source, plain)
        flowed = read(bootstrap_servers, [plain_sink], len(plain), timeout_s=OUTAGE_S, settle_s=0)
        assert len(flowed) == len(plain)
        time.sleep(OUTAGE_S)
        # Nothing of the second part passed; nothing was committed past it.
        assert not worker.worker.health.ready
        assert len(read(bootstrap_servers, [sink, dlq], len(first), settle_s=1)) == len(first)
        assert committed(bootstrap_servers, group, source, 1) in ([len(first)], [-1001])
        if outage == "paused":
            schema_registry.resume()
        else:
            gate.restore()
        outputs = read(bootstrap_servers, [sink, dlq], len(first) + len(second))
        deadline = time.monotonic() + 30
        while committed(bootstrap_servers, group, source, 1) != [len(first) + len(second)]:
            assert time.monotonic() < deadline, "the offsets did not catch up after the outage"
            time.sleep(0.5)
        assert worker.worker.health.ready

    assert Counter(o.topic for o in outputs) == {sink: len(first) + len(second)}
    events = decode_all(AvroDeserializer(client, conf=TOPIC_SUBJECT), outputs)
    assert sorted(events) == list(range(30))
    assert all(events[i]["lang"] == "de" for i in range(10, 30))


def test_run_reads_an_avro_topic_and_exits_cleanly_on_sigterm(
    bootstrap_servers: str, schema_registry: ApicurioRegistry, tiny_bart_dir: str, tmp_path: Path
) -> None:
    source, sink, dlq = fresh_topics(bootstrap_servers)
    client = SchemaRegistryClient({"url": schema_registry.url})
    serializer = avro_serializer(client, POST)
    records = [serializer(post(i, t), values(source)) for i, t in enumerate(fortunes(6))]
    produce(bootstrap_servers, source, [*records, b"not avro"])
    config = {
        "kafka": {"consumer": {"session.timeout.ms": SESSION_TIMEOUT_MS}},
        "model": {"device": "cpu", "dtype": "float32"},
        "metrics_port": 0,
        "topics": [topic_entry(source, sink, dlq, "avro")],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "ZSC_SCHEMA_REGISTRY_URL": schema_registry.url}
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--config", str(path),
         "--bootstrap-servers", bootstrap_servers, "--group-id", f"g-{uuid.uuid4().hex}",
         "--model", str(tiny_bart_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        outputs = read(bootstrap_servers, [sink, dlq], len(records) + 1, timeout_s=180)
    finally:
        process.send_signal(signal.SIGTERM)
        log, _ = process.communicate(timeout=120)
    assert process.returncode == 0, log.decode(errors="replace")
    assert Counter(o.topic for o in outputs) == {sink: len(records), dlq: 1}
    assert f"{sink}-value" in client.get_subjects()


def test_produce_writes_avro_with_a_schema_file_and_tail_decodes_it(
    bootstrap_servers: str, schema_registry: ApicurioRegistry, tmp_path: Path
) -> None:
    topic = f"sr-tools-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap_servers, [topic])
    schema = {
        "type": "record",
        "name": "Note",
        "fields": [{"name": "id", "type": "long"}, {"name": "text", "type": "string"}],
    }
    (tmp_path / "note.avsc").write_text(json.dumps(schema))
    events = [{"id": i, "text": f"note {i}"} for i in range(5)]
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    command = [sys.executable, "-m", "worker"]
    where = ["--bootstrap-servers", bootstrap_servers, "--schema-registry", schema_registry.url]
    produced = subprocess.run(
        [*command, "produce", str(tmp_path / "notes.jsonl"), "--topic", topic, *where,
         "--format", "avro", "--schema", str(tmp_path / "note.avsc")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    client = SchemaRegistryClient({"url": schema_registry.url})
    records = read(bootstrap_servers, [topic], len(events), settle_s=0)
    assert decode_all(AvroDeserializer(client, conf=TOPIC_SUBJECT), records) == dict(
        enumerate(events)
    )
    tailed = subprocess.run(
        [*command, "tail", "--topic", topic, *where, "--from-beginning", "--max", "5",
         "--idle-timeout", "60", "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert tailed.returncode == 0, tailed.stderr
    assert sorted(json.loads(line)["id"] for line in tailed.stdout.splitlines()) == list(range(5))
