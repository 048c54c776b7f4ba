"""The worker end to end on a real broker: classify, dead-letter, resume, share partitions."""

from __future__ import annotations

import uuid
from collections import Counter

import orjson
import pytest

from tests.integration.harness import (
    assert_scores_match,
    committed,
    make_settings,
    pipeline_scores,
    produce,
    read,
    running,
)
from tests.texts import fortunes
from worker.kafka.admin import ensure_topics
from worker.nli.classifier import load_classifier
from worker.nli.fake import FakeClassifier

NEWS = ["sports", "politics", "technology", "food", "love"]
MOODS = ["funny", "sad", "wise"]


def fresh(*suffixes: str, partitions: int = 1, bootstrap_servers: str) -> list[str]:
    """New topic names for one test, created on the broker."""
    base = f"t-{uuid.uuid4().hex[:10]}"
    names = [f"{base}.{suffix}" for suffix in suffixes]
    ensure_topics(bootstrap_servers, names, partitions)
    return names


@pytest.fixture(scope="module")
def bart(tiny_bart_dir: str):
    return load_classifier(str(tiny_bart_dir), "cpu", "float32")


def test_two_topics_with_their_own_labels_templates_and_modes(
    bootstrap_servers: str, bart, tiny_bart_dir: str
) -> None:
    news_in, news_out, news_dlq, mood_in, mood_out, mood_dlq = fresh(
        "news",
        "news.out",
        "news.dlq",
        "mood",
        "mood.out",
        "mood.dlq",
        bootstrap_servers=bootstrap_servers,
    )
    topics = [
        {"input": news_in, "output": news_out, "dead_letter": news_dlq, "labels": NEWS},
        {
            "input": mood_in,
            "output": mood_out,
            "dead_letter": mood_dlq,
            "labels": MOODS,
            "hypothesis_template": "The mood of this quote is {}.",
            "multi_label": True,
            "threshold": 0.4,
            "text_field": "quote",
        },
    ]
    texts = fortunes(40)
    news, moods = texts[:20], texts[20:]
    produce(
        bootstrap_servers,
        news_in,
        [orjson.dumps({"id": f"n{i}", "text": t, "lang": "en"}) for i, t in enumerate(news)],
        keys=[f"key-{i}".encode() for i in range(len(news))],
        headers=[[("trace", f"tr-{i}".encode())] for i in range(len(news))],
    )
    produce(
        bootstrap_servers,
        mood_in,
        [orjson.dumps({"id": f"m{i}", "quote": t}) for i, t in enumerate(moods)],
    )
    settings = make_settings(
        bootstrap_servers, f"g-{uuid.uuid4().hex}", topics, model={"name": str(tiny_bart_dir)}
    )
    with running(settings, bart):
        outputs = read(bootstrap_servers, [news_out, mood_out, news_dlq, mood_dlq], 40)

    assert Counter(o.topic for o in outputs) == {news_out: 20, mood_out: 20}
    expected_news = pipeline_scores(tiny_bart_dir, news, NEWS, "This example is {}.", False)
    expected_moods = pipeline_scores(
        tiny_bart_dir, moods, MOODS, "The mood of this quote is {}.", True
    )
    for output in outputs:
        event = output.json()
        result = event["classification"]
        index = int(event["id"][1:])
        assert result["model"] == str(tiny_bart_dir)
        if output.topic == news_out:
            assert event["text"] == news[index] and event["lang"] == "en"
            assert output.key == f"key-{index}".encode()
            assert output.headers == {"trace": f"tr-{index}".encode()}
            assert result["multi_label"] is False
            assert result["hypothesis_template"] == "This example is {}."
            assert result["predicted"] == result["labels"][:1]
            assert_scores_match(result, expected_news[index])
        else:
            assert event["quote"] == moods[index]
            assert result["multi_label"] is True
            assert result["predicted"] == [
                label
                for label, score in zip(result["labels"], result["scores"], strict=True)
                if score >= 0.4
            ]
            assert_scores_match(result, expected_moods[index])
        assert result["source"]["topic"] in (news_in, mood_in)


def test_hundreds_of_real_texts_match_the_pipeline_one_to_one(
    bootstrap_servers: str, bart, tiny_bart_dir: str
) -> None:
    source, sink, dlq = fresh("in", "out", "dlq", partitions=3, bootstrap_servers=bootstrap_servers)
    texts = fortunes(240)
    labels = ["computers", "science", "politics", "food", "sports", "love", "medicine", "law"]
    produce(
        bootstrap_servers,
        source,
        [orjson.dumps({"id": i, "text": t}) for i, t in enumerate(texts)],
        keys=[str(i).encode() for i in range(len(texts))],
    )
    topics = [
        {"input": source, "output": sink, "dead_letter": dlq, "labels": labels, "multi_label": True}
    ]
    settings = make_settings(bootstrap_servers, f"g-{uuid.uuid4().hex}", topics)
    with running(settings, bart):
        outputs = read(bootstrap_servers, [sink, dlq], len(texts))

    by_id = Counter(o.json()["id"] for o in outputs)
    assert by_id == {i: 1 for i in range(len(texts))}, "every event classified exactly once"
    expected = pipeline_scores(tiny_bart_dir, texts, labels, "This example is {}.", True)
    for output in outputs:
        event = output.json()
        assert output.key == str(event["id"]).encode()
        assert_scores_match(event["classification"], expected[event["id"]])
    assert sum(committed(bootstrap_servers, settings.kafka.group_id, source, 3)) == len(texts)


MALFORMED = [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe\xfd", "invalid_utf8"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'{"id": "x"}', "missing_text"),
    (b'{"text": ""}', "invalid_text"),
    (b'{"text": 42}', "invalid_text"),
    (None, "empty_value"),
]


def test_malformed_records_are_dead_lettered_and_their_neighbours_classified(
    bootstrap_servers: str,
) -> None:
    source, sink, dlq = fresh("in", "out", "dlq", bootstrap_servers=bootstrap_servers)
    values: list[bytes | None] = []
    keys: list[bytes | None] = []
    for i, (bad, _) in enumerate(MALFORMED):
        values += [orjson.dumps({"id": i, "text": f"good text number {i}"}), bad]
        keys += [f"good-{i}".encode(), f"bad-{i}".encode()]
    produce(
        bootstrap_servers, source, values, keys=keys, headers=[[("origin", b"test")]] * len(values)
    )
    topics = [{"input": source, "output": sink, "dead_letter": dlq, "labels": ["a", "b"]}]
    settings = make_settings(bootstrap_servers, f"g-{uuid.uuid4().hex}", topics)
    with running(settings, FakeClassifier()):
        outputs = read(bootstrap_servers, [sink, dlq], len(values))

    good = [o for o in outputs if o.topic == sink]
    dead = sorted((o for o in outputs if o.topic == dlq), key=lambda o: o.key or b"")
    assert sorted(o.json()["id"] for o in good) == list(range(len(MALFORMED)))
    assert len(dead) == len(MALFORMED)
    for output in dead:
        index = int((output.key or b"").decode().split("-")[1])
        assert output.value == MALFORMED[index][0], "dead-lettered bytes are unchanged"
        assert output.headers["zsc.error.type"] == MALFORMED[index][1].encode()
        assert output.headers["zsc.error.message"]
        assert output.headers["zsc.source.topic"] == source.encode()
        assert output.headers["zsc.source.partition"] == b"0"
        assert output.headers["zsc.source.offset"] == str(2 * index + 1).encode()
        assert output.headers["origin"] == b"test", "input headers are kept"
    assert committed(bootstrap_servers, settings.kafka.group_id, source, 1) == [len(values)]


def test_a_model_failure_dead_letters_only_the_event_it_failed_on(bootstrap_servers: str) -> None:
    source, sink, dlq = fresh("in", "out", "dlq", bootstrap_servers=bootstrap_servers)
    texts = [f"fine text {i}" for i in range(10)]
    texts[4] = "this one is POISON for the model"
    produce(
        bootstrap_servers, source, [orjson.dumps({"id": i, "text": t}) for i, t in enumerate(texts)]
    )
    topics = [{"input": source, "output": sink, "dead_letter": dlq, "labels": ["a", "b"]}]
    settings = make_settings(
        bootstrap_servers,
        f"g-{uuid.uuid4().hex}",
        topics,
        batching={"max_events": 10, "max_wait_ms": 200},
    )
    with running(settings, FakeClassifier(fail_on="POISON")):
        outputs = read(bootstrap_servers, [sink, dlq], len(texts))

    assert sorted(o.json()["id"] for o in outputs if o.topic == sink) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    [dead] = [o for o in outputs if o.topic == dlq]
    assert dead.headers["zsc.error.type"] == b"inference_failed"
    assert committed(bootstrap_servers, settings.kafka.group_id, source, 1) == [len(texts)]


def test_a_restarted_worker_resumes_from_the_committed_offsets(bootstrap_servers: str) -> None:
    source, sink, dlq = fresh("in", "out", "dlq", partitions=2, bootstrap_servers=bootstrap_servers)
    topics = [{"input": source, "output": sink, "dead_letter": dlq, "labels": ["a", "b"]}]
    settings = make_settings(bootstrap_servers, f"g-{uuid.uuid4().hex}", topics)
    first = [orjson.dumps({"id": i, "text": f"first run {i}"}) for i in range(30)]
    second = [orjson.dumps({"id": 30 + i, "text": f"second run {i}"}) for i in range(30)]
    # Keyed, so that both partitions hold records: keyless ones stick to one partition
    # at a time (librdkafka's sticky partitioner), and a partition without records has
    # no committed offset.
    keys = [str(i).encode() for i in range(60)]
    produce(bootstrap_servers, source, first, keys=keys[:30])
    with running(settings, FakeClassifier()):
        assert len(read(bootstrap_servers, [sink], 30, settle_s=0)) == 30
    offsets = committed(bootstrap_servers, settings.kafka.group_id, source, 2)
    assert all(offset > 0 for offset in offsets) and sum(offsets) == 30

    produce(bootstrap_servers, source, second, keys=keys[30:])
    with running(settings, FakeClassifier()):
        outputs = read(bootstrap_servers, [sink, dlq], 60)
    assert Counter(o.json()["id"] for o in outputs) == {i: 1 for i in range(60)}, (
        "the second run starts where the first committed: nothing lost, nothing twice"
    )


def test_two_workers_in_one_group_share_the_partitions(bootstrap_servers: str) -> None:
    source, sink, dlq = fresh("in", "out", "dlq", partitions=4, bootstrap_servers=bootstrap_servers)
    topics = [{"input": source, "output": sink, "dead_letter": dlq, "labels": ["a", "b"]}]
    settings = make_settings(bootstrap_servers, f"g-{uuid.uuid4().hex}", topics)
    values = [orjson.dumps({"id": i, "text": f"shared {i}"}) for i in range(200)]
    with running(settings, FakeClassifier()) as one, running(settings, FakeClassifier()) as two:
        one.wait_for_assignment()
        two.wait_for_assignment()
        # Keyed: keyless records stick to one partition at a time (librdkafka's sticky
        # partitioner), so a quick burst may leave a partition empty.
        keys = [str(i).encode() for i in range(len(values))]
        produce(bootstrap_servers, source, values, keys)
        outputs = read(bootstrap_servers, [sink, dlq], len(values))
        shares = (one.partitions(), two.partitions())
    assert {o.json()["id"] for o in outputs} == set(range(200)), "nothing lost"
    assert all(shares), f"both workers own partitions: {shares}"
    assert shares[0].isdisjoint(shares[1]) and len(shares[0] | shares[1]) == 4
    sources = Counter(o.json()["classification"]["source"]["partition"] for o in outputs)
    assert set(sources) == {0, 1, 2, 3}
