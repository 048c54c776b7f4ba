"""`zsc-worker demo`: sample events through a real worker on the embedded broker, as a table."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TextIO

import orjson
from confluent_kafka import Consumer, Producer

from config.kafka import DEFAULT_BOOTSTRAP
from config.settings import DEFAULT_MODEL, Settings
from worker import errors
from worker.app import Worker
from worker.embedded.tansu import RECOMMENDED_SESSION_TIMEOUT_MS
from worker.kafka.admin import ensure_topics
from worker.models import Models
from worker.routing import Router
from worker.tools import ResultRow, print_table

# Live topic entries (`zsc-worker topics`); compacted, as a control topic is meant to be.
CONTROL_TOPIC = "demo.control"
COMPACTED = {"cleanup.policy": "compact"}
# What --keep-running prints after the table.
KEEP_RUNNING = """
The broker and the worker keep running (Ctrl-C stops them). In another terminal:
  zsc-worker topics set --bootstrap-servers {servers} --control-topic {control} \\
      --topic demo.posts --labels sports,politics,technology,science
  echo '{{"id": "new-1", "text": "Water was found on a distant planet."}}' > post.jsonl
  zsc-worker produce post.jsonl --topic demo.posts --bootstrap-servers {servers}
  zsc-worker tail --topic demo.posts.classified --from-beginning --bootstrap-servers {servers}"""
# The demo gives up waiting for results after this long (a cold CPU model is slow).
RESULTS_TIMEOUT_S = 300.0

POSTS = [
    "The striker scored twice in the last ten minutes to win the cup final.",
    "Parliament passed the budget after a long night of negotiations.",
    "The new phone ships with a faster chip and a brighter screen.",
    "Our team lost again; the coach says the defence needs work.",
    "The senator announced she will run for governor next year.",
    "Researchers released an open-source compiler for quantum programs.",
    "Tickets for the marathon sold out within an hour.",
    "The election commission will recount the votes in three districts.",
]
COMMENTS = [
    "Why does the app crash every time I open the settings page?",
    "Absolutely loved this article, thank you for writing it!",
    "BUY CHEAP WATCHES NOW!!! click the link in my profile",
    "You are an idiot and everyone here hates you.",
]
MALFORMED: list[bytes] = [b"{this is not json", b'{"text": ""}', b"\xff\xfe not utf-8"]


def demo_texts() -> list[str]:
    """Every text the demo scores: its events, and the hypotheses of its topics' labels."""
    router = Router.from_settings(demo_settings(DEFAULT_BOOTSTRAP, DEFAULT_MODEL))
    hypotheses = [h for topic in router.input_topics for h in router.route(topic).task.hypotheses()]
    return [*POSTS, *COMMENTS, *hypotheses]


def demo_settings(bootstrap_servers: str, model: str) -> Settings:
    """Two topics, one single-label and one multi-label, on the given broker."""
    return Settings(
        kafka={
            "bootstrap_servers": bootstrap_servers,
            "group_id": f"zsc-demo-{uuid.uuid4().hex[:8]}",
            "consumer": {"session.timeout.ms": RECOMMENDED_SESSION_TIMEOUT_MS},
        },
        model={"name": model},
        batching={"max_events": 16, "max_wait_ms": 100},
        metrics_port=0,
        control_topic=CONTROL_TOPIC,
        topics=[
            {
                "input": "demo.posts",
                "output": "demo.posts.classified",
                "labels": ["sports", "politics", "technology"],
            },
            {
                "input": "demo.comments",
                "output": "demo.comments.tagged",
                "labels": ["question", "praise", "spam", "insult"],
                "hypothesis_template": "This comment is {}.",
                "multi_label": True,
            },
        ],
    )


def run_demo(
    model: str,
    bootstrap_servers: str | None,
    out: TextIO = sys.stdout,
    keep_running: threading.Event | None = None,
) -> int:
    """Load the model, start a broker if none is given, classify the samples, print them.

    With `keep_running`, the broker and the worker stay up after the table
    until that event is set (SIGINT or SIGTERM), for commands run beside them.
    """
    from worker.nli.classifier import load_classifier

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(f"loading model {model} ...", file=out, flush=True)
    classifier = load_classifier(model)
    with _broker(bootstrap_servers, out) as servers:
        settings = demo_settings(servers, model)
        topics = [name for t in settings.topics for name in (t.input, t.output, t.dead_letter)]
        ensure_topics(servers, topics)
        ensure_topics(servers, [CONTROL_TOPIC], config=COMPACTED)
        expected = _produce_samples(servers)
        stop = threading.Event()
        # Every demo topic is scored by the one model.
        worker = Worker(settings, Models.one(classifier))
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                worker.run(stop)
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=serve, name="zsc-demo-worker")
        thread.start()
        try:
            results = _collect(servers, settings, expected, failure)
            print(file=out)
            print_table(sorted(results, key=lambda row: (row.topic, row.text)), out)
            if keep_running is not None:
                print(KEEP_RUNNING.format(servers=servers, control=CONTROL_TOPIC), file=out)
                out.flush()
                while not keep_running.wait(0.5) and thread.is_alive():
                    pass
        finally:
            stop.set()
            thread.join()
        if failure:
            raise errors.ZscError(f"the worker failed: {failure[0]}")
    return 0


@contextlib.contextmanager
def _broker(bootstrap_servers: str | None, out: TextIO) -> Iterator[str]:
    if bootstrap_servers:
        yield bootstrap_servers
        return
    from worker.embedded.tansu import TansuBroker

    with TansuBroker() as broker:
        print(f"embedded broker (Tansu) on {broker.bootstrap_servers}", file=out, flush=True)
        yield broker.bootstrap_servers


def _produce_samples(servers: str) -> int:
    producer = Producer({"bootstrap.servers": servers})
    for i, text in enumerate(POSTS):
        producer.produce("demo.posts", orjson.dumps({"id": f"post-{i}", "text": text}))
    for i, text in enumerate(COMMENTS):
        producer.produce("demo.comments", orjson.dumps({"id": f"comment-{i}", "text": text}))
    for value in MALFORMED:
        producer.produce("demo.posts", value)
    producer.flush(30)
    return len(POSTS) + len(COMMENTS) + len(MALFORMED)


def _collect(
    servers: str, settings: Settings, expected: int, failure: list[BaseException]
) -> list[ResultRow]:
    """A table row for the output or dead-letter record of every sample."""
    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": f"zsc-demo-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": RECOMMENDED_SESSION_TIMEOUT_MS,
        }
    )
    consumer.subscribe([name for t in settings.topics for name in (t.output, t.dead_letter)])
    results: list[ResultRow] = []
    deadline = time.monotonic() + RESULTS_TIMEOUT_S
    try:
        while len(results) < expected and time.monotonic() < deadline and not failure:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            results.append(
                ResultRow.from_record(message.topic() or "", message.value(), message.headers())
            )
    finally:
        consumer.close()
    if len(results) < expected and not failure:
        raise errors.ZscError(f"only {len(results)} of {expected} results arrived in time")
    return results
