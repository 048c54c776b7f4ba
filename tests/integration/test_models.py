"""A model per topic through the broker: one worker, each topic scored by its own model, with
the pipeline's scores on that model, and the model named in outputs and metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.conftest import TinyModelFactory
from tests.integration.harness import (
    SESSION_TIMEOUT_MS,
    Output,
    assert_scores_match,
    make_settings,
    pipeline_scores,
    produce,
    read,
    running,
)
from tests.integration.test_metrics import get, samples, value
from tests.models import ENTAILMENT_NEUTRAL_CONTRADICTION
from tests.texts import fortunes
from worker.embedded.base import free_loopback_ports
from worker.kafka.admin import ensure_topics
from worker.nli.classifier import load_classifier

LABELS = ["computers", "food", "love", "sports"]
TEMPLATE = "This example is {}."
STARTUP_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def reordered_bart_dir(tiny_model_factory: TinyModelFactory) -> Path:
    """A tiny BART whose classes are entailment, neutral, contradiction (mDeBERTa's order)."""
    return tiny_model_factory("bart", ENTAILMENT_NEUTRAL_CONTRADICTION)


def fresh_topics(bootstrap_servers: str, *names: str) -> dict[str, tuple[str, str]]:
    """An input and an output topic for each name, created on the broker."""
    base = f"models-{uuid.uuid4().hex[:8]}"
    topics = {name: (f"{base}.{name}", f"{base}.{name}.out") for name in names}
    ensure_topics(bootstrap_servers, [t for pair in topics.values() for t in pair], 1)
    return topics


def entry(input_topic: str, output: str, **keys: Any) -> dict[str, Any]:
    return {"input": input_topic, "output": output, "labels": LABELS, **keys}


def assert_parity(outputs: list[Output], texts: list[str], model_dir: Path) -> None:
    """Each output has the pipeline's scores on `model_dir` and names that model."""
    expected = pipeline_scores(str(model_dir), texts, LABELS, TEMPLATE, False)
    assert len(outputs) == len(texts)
    for output in outputs:
        event = output.json()
        assert event["classification"]["model"] == str(model_dir)
        assert_scores_match(event["classification"], expected[event["id"]])


def test_three_topics_on_three_models_each_match_the_pipeline_on_its_own_model(
    bootstrap_servers: str, tiny_bart_dir: Path, reordered_bart_dir: Path, tiny_deberta_dir: Path
) -> None:
    topics = fresh_topics(bootstrap_servers, "default", "reordered", "deberta")
    (default_in, default_out), (reordered_in, reordered_out), (deberta_in, deberta_out) = (
        topics.values()
    )
    settings = make_settings(
        bootstrap_servers,
        f"g-{uuid.uuid4().hex[:8]}",
        [
            entry(default_in, default_out),
            entry(reordered_in, reordered_out, model=str(reordered_bart_dir)),
            entry(deberta_in, deberta_out, model={"name": str(tiny_deberta_dir)}),
        ],
        model={"name": str(tiny_bart_dir), "device": "cpu", "dtype": "float32"},
    )
    texts = fortunes(12)
    # The same texts on every topic: only the model tells their scores apart.
    events = [orjson.dumps({"id": i, "text": text}) for i, text in enumerate(texts)]
    # The top-level model comes loaded; the worker loads the topics' own models.
    bart = load_classifier(str(tiny_bart_dir), "cpu", "float32")
    with running(settings, bart) as worker:
        for input_topic, _ in topics.values():
            produce(bootstrap_servers, input_topic, events)
        outputs = read(bootstrap_servers, [out for _, out in topics.values()], 3 * len(texts))
        registry = worker.worker.metrics.registry
        for model_dir in (tiny_bart_dir, reordered_bart_dir, tiny_deberta_dir):
            labels = {"model": str(model_dir)}
            # Batches never mix models: each model's batches hold its topic's events.
            assert registry.get_sample_value("zsc_batch_size_sum", labels) == len(texts)
            assert registry.get_sample_value("zsc_inference_seconds_count", labels)
        infos = [
            sample.labels
            for family in registry.collect()
            if family.name == "zsc_model"
            for sample in family.samples
        ]
    assert sorted(info["model"] for info in infos) == sorted(
        map(str, (tiny_bart_dir, reordered_bart_dir, tiny_deberta_dir))
    )
    assert {info["architecture"] for info in infos} == {"bart", "deberta-v2"}
    for out, model_dir in (
        (default_out, tiny_bart_dir),
        (reordered_out, reordered_bart_dir),
        (deberta_out, tiny_deberta_dir),
    ):
        assert_parity([o for o in outputs if o.topic == out], texts, model_dir)


def test_zsc_worker_run_serves_two_models_ready_once_both_load_with_a_cache_each(
    bootstrap_servers: str, tiny_bart_dir: Path, reordered_bart_dir: Path, tmp_path: Path
) -> None:
    topics = fresh_topics(bootstrap_servers, "default", "reordered")
    (default_in, default_out), (reordered_in, reordered_out) = topics.values()
    [port] = free_loopback_ports(1)
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap_servers,
            "group_id": f"g-{uuid.uuid4().hex[:8]}",
            "consumer": {"session.timeout.ms": SESSION_TIMEOUT_MS},
        },
        "model": {"name": str(tiny_bart_dir), "device": "cpu", "dtype": "float32"},
        "metrics_port": port,
        # Same texts, labels and template on both topics: a shared cache would serve
        # one model's scores for the other's.
        "result_cache": {"max_entries": 100},
        "topics": [
            entry(default_in, default_out),
            entry(reordered_in, reordered_out, model=str(reordered_bart_dir)),
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    texts = fortunes(10)
    events = [orjson.dumps({"id": i, "text": text}) for i, text in enumerate(texts)]
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "run", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, "the worker exited"
            try:
                if get(f"{url}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.2)
        produce(bootstrap_servers, default_in, events)
        produce(bootstrap_servers, reordered_in, events)
        outputs = read(bootstrap_servers, [default_out, reordered_out], 2 * len(texts))
        found = samples(get(f"{url}/metrics")[1].decode())
    finally:
        process.send_signal(signal.SIGTERM)
        log, _ = process.communicate(timeout=60)
    assert process.returncode == 0, log.decode(errors="replace")[-2000:]
    assert_parity([o for o in outputs if o.topic == default_out], texts, tiny_bart_dir)
    assert_parity([o for o in outputs if o.topic == reordered_out], texts, reordered_bart_dir)
    infos = [dict(labels) for (name, labels), _ in found.items() if name == "zsc_model_info"]
    assert sorted(info["model"] for info in infos) == sorted(
        [str(tiny_bart_dir), str(reordered_bart_dir)]
    )
    assert all(info["result_cache_entries"] == "100" for info in infos)
    for model_dir in (tiny_bart_dir, reordered_bart_dir):
        assert value(found, "zsc_batch_size_sum", model=str(model_dir)) == len(texts)
