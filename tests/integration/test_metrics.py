"""A running worker answers its probes and counts what happened in its metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import SESSION_TIMEOUT_MS, produce, read
from tests.texts import fortunes
from worker.embedded.base import free_loopback_ports
from worker.kafka.admin import ensure_topics

STARTUP_TIMEOUT_S = 180.0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_probes_and_metrics_of_a_worker_under_traffic(
    bootstrap_servers: str, tiny_bart_dir: Path, tmp_path: Path
) -> None:
    base = f"metrics-{uuid.uuid4().hex[:8]}"
    source, sink, dlq = f"{base}.in", f"{base}.out", f"{base}.dlq"
    ensure_topics(bootstrap_servers, [source, sink, dlq], partitions=2)
    [port] = free_loopback_ports(1)
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap_servers,
            "group_id": f"g-{base}",
            "consumer": {"session.timeout.ms": SESSION_TIMEOUT_MS},
        },
        "model": {"name": str(tiny_bart_dir), "device": "cpu", "dtype": "float32"},
        "metrics_port": port,
        "topics": [
            {"input": source, "output": sink, "dead_letter": dlq, "labels": ["a", "b", "c"]}
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    texts = fortunes(20)
    good = [orjson.dumps({"id": i, "text": t}) for i, t in enumerate(texts)]
    bad = [b"{broken", b'{"text": ""}', b'{"text": []}']

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
                if get(f"{url}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no /healthz"
            time.sleep(0.2)
        while get(f"{url}/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.2)

        produce(bootstrap_servers, source, good + bad)
        outputs = read(bootstrap_servers, [sink, dlq], len(good) + len(bad), settle_s=0)
        assert len(outputs) == len(good) + len(bad)
        # Deliveries are counted when acknowledged and lag is sampled every few
        # seconds: give the loop a moment to see both.
        while True:
            status, body = get(f"{url}/metrics")
            found = samples(body.decode())
            classified = value(found, "zsc_events_classified_total", topic=source)
            if classified >= len(good) and any(n == "zsc_consumer_lag" for n, _ in found):
                break
            assert time.monotonic() < deadline, "classified events or lag were not reported"
            time.sleep(0.2)
        assert status == 200
        assert get(f"{url}/healthz")[0] == 200
        assert get(f"{url}/readyz")[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        log, _ = process.communicate(timeout=60)
    assert process.returncode == 0, log.decode(errors="replace")[-2000:]

    assert value(found, "zsc_events_consumed_total", topic=source) == len(good) + len(bad)
    assert value(found, "zsc_events_classified_total", topic=source) == len(good)
    dead = {
        labels: v for (name, labels), v in found.items() if name == "zsc_events_dead_lettered_total"
    }
    assert sum(dead.values()) == len(bad)
    assert value(found, "zsc_events_dead_lettered_total", topic=source, reason="invalid_json") == 1
    assert value(found, "zsc_events_dead_lettered_total", topic=source, reason="invalid_text") == 2
    model = str(tiny_bart_dir)
    assert value(found, "zsc_batch_size_count", model=model) >= 1
    assert value(found, "zsc_batch_size_sum", model=model) == len(good) + len(bad)
    assert value(found, "zsc_batch_tokens_sum", model=model) > 0
    assert value(found, "zsc_inference_seconds_count", model=model) >= 1
    assert value(found, "zsc_end_to_end_seconds_count") == len(good)
    # Every record waited for the model, rejected ones riding along; only
    # decodable events are tokenized.
    assert value(found, "zsc_queue_wait_seconds_count", model=model) == len(good) + len(bad)
    assert value(found, "zsc_tokenization_seconds_count") == len(good)
    assert value(found, "zsc_tokenization_seconds_sum") > 0
    assert value(found, "zsc_paused_partitions") == 0
    [info] = [labels for (name, labels), _ in found.items() if name == "zsc_model_info"]
    assert dict(info) == {
        "model": str(tiny_bart_dir),
        "architecture": "bart",
        "device": "cpu",
        "precision": "float32",
        "runtime": "onnxruntime",
        "max_batch_tokens": "8192",  # batching.max_tokens: one budget
    }
    text_of_first = texts[0][:30]
    assert text_of_first not in log.decode(errors="replace"), "event texts stay out of the log"
