"""Quality controls through the broker: ensembles, label groups, routes, multilingual topics."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.integration.harness import make_settings, pipeline_scores, produce, read, running
from tests.texts import fortunes
from worker.kafka.admin import ensure_topics
from worker.nli.classifier import load_classifier

TEMPLATES = ["This text is about {}.", "The topic of this text is {}."]
TOPICS = ["computers", "food", "love", "politics"]
SENTIMENT = ["positive", "negative", "neutral"]
TOLERANCE = 1e-4


def fresh(bootstrap_servers: str, *suffixes: str) -> list[str]:
    base = f"q-{uuid.uuid4().hex[:10]}"
    names = [f"{base}.{suffix}" for suffix in suffixes]
    ensure_topics(bootstrap_servers, names, partitions=2)
    return names


def mean_over_templates(model_dir: Path, texts, labels, multi_label) -> list[dict[str, float]]:
    per_template = [pipeline_scores(model_dir, texts, labels, t, multi_label) for t in TEMPLATES]
    return [
        {label: float(np.mean([p[i][label] for p in per_template])) for label in labels}
        for i in range(len(texts))
    ]


def test_ensemble_group_and_routes_match_the_pipeline_and_the_rules(
    bootstrap_servers: str, tiny_bart_dir: Path
) -> None:
    source, sink, dlq, flagged, review = fresh(
        bootstrap_servers, "in", "out", "dlq", "flagged", "review"
    )
    topic = {
        "input": source,
        "output": sink,
        "dead_letter": dlq,
        "labels": TOPICS,
        "hypothesis_template": TEMPLATES,
        "multi_label": True,
        "label_groups": {"sentiment": {"labels": SENTIMENT, "multi_label": False}},
        "include_logits": True,
        "routes": [
            {"label": "politics", "min_score": 0.5, "topic": flagged},
            {"none_above": 0.3, "topic": review},
        ],
    }
    texts = fortunes(30)
    produce(
        bootstrap_servers, source, [orjson.dumps({"id": i, "text": t}) for i, t in enumerate(texts)]
    )
    settings = make_settings(bootstrap_servers, f"g-{uuid.uuid4().hex}", [topic])
    classifier = load_classifier(str(tiny_bart_dir), "cpu", "float32")
    main = mean_over_templates(tiny_bart_dir, texts, TOPICS, True)
    group = mean_over_templates(tiny_bart_dir, texts, SENTIMENT, False)
    should_flag = {i for i in range(len(texts)) if main[i]["politics"] >= 0.5}
    should_review = {i for i in range(len(texts)) if max(main[i].values()) < 0.3}
    expected = len(texts) + len(should_flag) + len(should_review)
    with running(settings, classifier):
        outputs = read(bootstrap_servers, [sink, dlq, flagged, review], expected)

    by_topic: dict[str, list[dict]] = {}
    for output in outputs:
        by_topic.setdefault(output.topic, []).append(output.json())
    assert Counter(e["id"] for e in by_topic[sink]) == {i: 1 for i in range(len(texts))}
    for event in by_topic[sink]:
        result, i = event["classification"], event["id"]
        assert result["hypothesis_template"] == TEMPLATES
        for label, score in zip(result["labels"], result["scores"], strict=True):
            assert abs(score - main[i][label]) <= TOLERANCE, (i, label)
        sentiment = result["groups"]["sentiment"]
        for label, score in zip(sentiment["labels"], sentiment["scores"], strict=True):
            assert abs(score - group[i][label]) <= TOLERANCE, (i, label)
        assert sentiment["predicted"] == sentiment["labels"][:1]
        assert len(result["logits"]["politics"]["entailment"]) == len(TEMPLATES)
    assert {e["id"] for e in by_topic.get(flagged, [])} == should_flag
    assert {e["id"] for e in by_topic.get(review, [])} == should_review
    assert len(by_topic.get(flagged, [])) == len(should_flag), "each routed once"
    routed = by_topic.get(flagged, []) + by_topic.get(review, [])
    assert all("classification" in e for e in routed), "routes carry the enriched event"


@pytest.mark.parametrize(
    ("lang", "template", "labels"),
    [
        ("de", "Dieser Text handelt von {}.", ["Liebe", "Politik", "Essen"]),
        ("pt", "Este texto é sobre {}.", ["amor", "política", "comida"]),
        ("zh", "这段文字是关于{}的。", ["爱情", "政治", "食物"]),
    ],
)
def test_a_multilingual_topic_matches_the_pipeline(
    bootstrap_servers: str, tiny_mdeberta_dir: Path, lang: str, template: str, labels: list[str]
) -> None:
    from tests.models import CHINESE, PORTUGUESE

    texts = {"de": lambda: fortunes(10, lang="de"), "pt": lambda: list(PORTUGUESE),
             "zh": lambda: list(CHINESE)}[lang]()  # fmt: skip
    source, sink, dlq = fresh(bootstrap_servers, "in", "out", "dlq")
    topic = {"input": source, "output": sink, "dead_letter": dlq, "labels": labels,
             "hypothesis_template": template}  # fmt: skip
    produce(
        bootstrap_servers, source, [orjson.dumps({"id": i, "text": t}) for i, t in enumerate(texts)]
    )
    settings = make_settings(bootstrap_servers, f"g-{uuid.uuid4().hex}", [topic])
    classifier = load_classifier(str(tiny_mdeberta_dir), "cpu", "float32")
    with running(settings, classifier):
        outputs = read(bootstrap_servers, [sink, dlq], len(texts))
    expected = pipeline_scores(tiny_mdeberta_dir, texts, labels, template, False)
    assert sorted(o.json()["id"] for o in outputs if o.topic == sink) == list(range(len(texts)))
    for output in outputs:
        event = output.json()
        assert event["text"] == texts[event["id"]], "non-ASCII text passes through unchanged"
        result = event["classification"]
        for label, score in zip(result["labels"], result["scores"], strict=True):
            assert abs(score - expected[event["id"]][label]) <= TOLERANCE
