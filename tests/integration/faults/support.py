"""What the fault tests share: event streams, worker processes, a tally of what came out.

Every test event carries a `test-id` header. Outputs and dead-letter records
keep their input's headers, so a `Tally` reading both topics counts, for each
event, how many records stand for it: 0 is a loss, 2 or more a duplicate.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
import yaml
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from tests.integration.harness import SESSION_TIMEOUT_MS

TEST_ID = "test-id"
LABELS = ["sports", "politics", "technology", "food"]
# Subjects for the texts of test events: varied, so the fake's scores vary too.
SUBJECTS = ["the match", "the election", "a new phone", "the soup", "a long trip", "the budget"]
# How long a worker process may take to stop after SIGTERM on top of its
# shutdown_timeout_s: interpreter exit, closing the clients.
EXIT_MARGIN_S = 10.0
# A killed or stopped worker's records may still be on their way: a tally keeps
# reading this long after the last expected record for duplicates to show.
SETTLE_S = 3.0
# How long a read of a partition's offsets may wait for its leader.
WATERMARK_TIMEOUT_S = 30.0
# librdkafka holds at most this much prefetched data for a test reader.
READER_PREFETCH_KBYTES = 4096
# How long a reader waits for a new topic to show in the metadata, and how often it asks.
TOPIC_METADATA_TIMEOUT_S = 30.0
METADATA_RETRY_S = 0.1


def event_value(number: int) -> bytes:
    """A valid input event."""
    subject = SUBJECTS[number % len(SUBJECTS)]
    return orjson.dumps({"id": number, "text": f"Event {number}: news about {subject}."})


def topics_config(source: str, sink: str, dead_letter: str) -> list[dict[str, Any]]:
    """The `topics` entry of one input topic."""
    return [{"input": source, "output": sink, "dead_letter": dead_letter, "labels": LABELS}]


def produce_events(
    bootstrap_servers: str,
    topic: str,
    values: Sequence[bytes | None],
    first_id: int = 0,
    keys: Sequence[bytes | None] | None = None,
) -> None:
    """Produce records tagged `test-id` first_id, first_id + 1, ...; wait for them all."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            # Fuzz tests send records up to the broker's default limit (1 MiB).
            "message.max.bytes": 1_048_576,
        }
    )
    for index, value in enumerate(values):
        number = first_id + index
        key = keys[index] if keys is not None else str(number).encode()
        producer.produce(topic, value, key, headers=[(TEST_ID, str(number).encode())])
        if index % 1000 == 999:
            producer.poll(0)
    assert producer.flush(60) == 0, "test events were not all acknowledged"


class EventStream:
    """Produces events 0..count-1 at a steady rate on a thread: load that goes on during faults."""

    def __init__(self, bootstrap_servers: str, topic: str, count: int, per_second: float) -> None:
        self.count = count
        self._produced = 0
        self._stop = threading.Event()
        self._producer = Producer(
            {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True}
        )
        self._topic = topic
        self._interval_s = 1.0 / per_second
        self._failures: list[KafkaError] = []
        self._thread = threading.Thread(target=self._run, name="event-stream", daemon=True)

    def start(self) -> EventStream:
        """Start producing."""
        self._thread.start()
        return self

    def join(self, timeout_s: float = 120.0) -> None:
        """Wait until every event is acknowledged."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the event stream did not finish"
        assert not self._failures, f"test events failed: {self._failures[:3]}"

    @property
    def produced(self) -> int:
        """How many events (0..produced-1) were handed to the producer so far."""
        return self._produced

    def stop(self, timeout_s: float = 120.0) -> int:
        """Stop before `count` (load that lasts as long as the faults do), wait until every
        event produced is acknowledged, and return how many were."""
        self._stop.set()
        self.join(timeout_s)
        return self._produced

    def _run(self) -> None:
        started = time.monotonic()
        for number in range(self.count):
            delay = started + number * self._interval_s - time.monotonic()
            if self._stop.wait(max(0.0, delay)):
                break
            self._producer.produce(
                self._topic,
                event_value(number),
                str(number).encode(),
                headers=[(TEST_ID, str(number).encode())],
                on_delivery=self._delivered,
            )
            self._produced = number + 1
            self._producer.poll(0)
        self._producer.flush(120)

    def _delivered(self, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            self._failures.append(error)


@dataclass(frozen=True, slots=True)
class Seen:
    """A record read back: which event it stands for, where, and its dead-letter reason."""

    event: int
    topic: str
    error_type: str | None
    message: Message


def end_offsets(bootstrap_servers: str, topic: str, partitions: int, isolation: str) -> list[int]:
    """Each partition's end offset as a reader of `isolation` sees it (read_committed: the
    last stable offset)."""
    reader = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"ends-{topic}",
            "isolation.level": isolation,
        }
    )
    try:
        return [
            reader.get_watermark_offsets(TopicPartition(topic, partition), WATERMARK_TIMEOUT_S)[1]
            for partition in range(partitions)
        ]
    finally:
        reader.close()


def output_ends(bootstrap_servers: str, topic: str, partitions: int) -> str:
    """A topic's ends and last stable offsets, per partition: an output partition whose last
    stable offset lags its end holds an open transaction that read_committed readers wait for."""
    ends = end_offsets(bootstrap_servers, topic, partitions, "read_uncommitted")
    stable = end_offsets(bootstrap_servers, topic, partitions, "read_committed")
    return f"ends of {topic}: {ends}, last stable offsets: {stable}"


def known_partitions(
    client: Consumer, topic: str, timeout_s: float = TOPIC_METADATA_TIMEOUT_S
) -> list[int]:
    """The partitions of `topic`, once the metadata `client` gets has the topic.

    A topic just created reaches the brokers of a cluster one by one: for a
    moment the broker a client asks answers "unknown topic" with no partitions,
    and a reader assigned from that answer would read nothing, ever.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        found = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if found is not None and found.error is None and found.partitions:
            return sorted(found.partitions)
        if time.monotonic() > deadline:
            why = found.error if found is not None else "absent"
            raise TimeoutError(f"topic {topic} not in the metadata after {timeout_s:.0f} s: {why}")
        time.sleep(METADATA_RETRY_S)


class Tally:
    """Reads output and dead-letter topics from the start, on a thread, counting per event.

    `read_committed` shows only what committed transactions wrote: what a
    downstream reader of an exactly-once worker sees.
    """

    def __init__(
        self, bootstrap_servers: str, topics: Sequence[str], isolation: str = "read_committed"
    ) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                # Never joined (see below); librdkafka requires one all the same.
                "group.id": f"tally-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": isolation,
                # Test readers do not need librdkafka's 64 MiB of read-ahead.
                "queued.max.messages.kbytes": READER_PREFETCH_KBYTES,
            }
        )
        # Assigned, not subscribed: a reader in a group would lose its
        # partitions in a broker outage and, committing nothing, read them
        # again from the start, counting every record twice.
        self._consumer.assign(
            [
                TopicPartition(topic, partition, OFFSET_BEGINNING)
                for topic in topics
                for partition in known_partitions(self._consumer, topic)
            ]
        )
        self.records: list[Seen] = []
        self.counts: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tally", daemon=True)

    def start(self) -> Tally:
        """Start reading."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reading and close the consumer."""
        self._stop.set()
        self._thread.join(30)

    def __enter__(self) -> Tally:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def missing(self, expected: Iterable[int]) -> set[int]:
        """Events of `expected` no record stands for yet."""
        with self._lock:
            return {event for event in expected if event not in self.counts}

    def duplicates(self) -> int:
        """Records beyond the first for their event."""
        with self._lock:
            return sum(count - 1 for count in self.counts.values() if count > 1)

    def total(self) -> int:
        """Records read."""
        with self._lock:
            return len(self.records)

    def wait_for(
        self, expected: Iterable[int], timeout_s: float, settle_s: float = SETTLE_S
    ) -> None:
        """Block until a record stands for every expected event (or the timeout), then settle."""
        wanted = set(expected)
        deadline = time.monotonic() + timeout_s
        while self.missing(wanted) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(settle_s)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                message = self._consumer.poll(0.2)
                if message is None or message.error() is not None:
                    continue
                headers = dict(message.headers() or [])
                test_id = headers.get(TEST_ID)
                if test_id is None:
                    continue
                error_type = headers.get("zsc.error.type")
                seen = Seen(
                    int(test_id),
                    message.topic() or "",
                    error_type.decode() if isinstance(error_type, bytes) else error_type,
                    message,
                )
                with self._lock:
                    self.records.append(seen)
                    self.counts[seen.event] += 1
        finally:
            self._consumer.close()


def write_config(
    directory: Path,
    bootstrap_servers: str,
    group_id: str,
    topics: list[dict[str, Any]],
    session_timeout_ms: int | None = SESSION_TIMEOUT_MS,
    **overrides: Any,
) -> Path:
    """A YAML config file for a worker process (metrics server off, short session timeout).

    `session_timeout_ms=None` leaves the session timeout at the worker's default.
    `properties`, `consumer` and `producer` overrides go into `kafka`; the others
    are top-level keys.
    """
    consumer = dict(overrides.pop("consumer", {}))
    if session_timeout_ms is not None:
        consumer.setdefault("session.timeout.ms", session_timeout_ms)
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "properties": overrides.pop("properties", {}),
            "consumer": consumer,
            "producer": overrides.pop("producer", {}),
        },
        "batching": {"max_events": 32, "max_wait_ms": 20},
        "metrics_port": 0,
        "shutdown_timeout_s": 10,
        "topics": topics,
        **overrides,
    }
    path = directory / f"config-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class WorkerProcess:
    """`zsc-worker run` as a process, with the fake model (see fake_worker), logging to a file."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        model: str = "fake:",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`env` adds environment variables (`ZSC_*`) to the process's."""
        self.config = config
        self.log_path = log_path
        self.model = model
        self.env = {**os.environ, **(env or {})}
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def alive(self) -> bool:
        """Whether the process runs."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._process.pid if self._process is not None and self.alive else None

    def start(self) -> WorkerProcess:
        """Start (or restart) the worker."""
        assert not self.alive, "already running"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        command = [sys.executable, "-m", "tests.integration.faults.fake_worker", "run"]
        command += ["--config", str(self.config), "--model", self.model]
        self._process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, an open transaction left behind."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._reap(EXIT_MARGIN_S)

    def terminate(self, timeout_s: float) -> tuple[int, float]:
        """SIGTERM, as an orchestrator stops a pod; returns the exit code and how long it took."""
        assert self._process is not None
        started = time.monotonic()
        self._process.send_signal(signal.SIGTERM)
        code = self._reap(timeout_s)
        return code, time.monotonic() - started

    def wait_for_exit(self, timeout_s: float) -> int:
        """Wait for the worker to exit by itself; returns its exit code."""
        return self._reap(timeout_s)

    def wait_for_log(self, text: str, times: int = 1, timeout_s: float = 60.0) -> None:
        """Block until the worker's log (across restarts) holds `text` `times` times."""
        deadline = time.monotonic() + timeout_s
        while self.log().count(text) < times:
            assert self.alive, f"the worker exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log()[-3000:]}"
            time.sleep(0.1)

    def log(self) -> str:
        """Everything the worker wrote so far, across restarts."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _reap(self, timeout_s: float) -> int:
        assert self._process is not None
        try:
            code = self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise AssertionError(f"the worker did not exit within {timeout_s:.0f} s") from None
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return code

    def close(self) -> None:
        """Kill the process if it still runs (test clean-up)."""
        if self.alive:
            self.kill()


@contextlib.contextmanager
def worker_processes(*workers: WorkerProcess) -> Iterator[tuple[WorkerProcess, ...]]:
    """Worker processes killed at the end of the block, whatever happens in it."""
    try:
        yield workers
    finally:
        for worker in workers:
            worker.close()


def guarantee_servers(request: pytest.FixtureRequest, guarantee: str) -> str:
    """The session broker; exactly-once skips where aborted transactions are not hidden."""
    fixture = (
        "exactly_once_bootstrap_servers" if guarantee == "exactly-once" else "bootstrap_servers"
    )
    return str(request.getfixturevalue(fixture))


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` every 50 ms until it holds; fail naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
