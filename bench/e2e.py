"""The worker end to end through Kafka: events produced -> enriched events acknowledged.

Worker processes (`bench.serve`) run the real loop against an embedded broker:
Apache Kafka where Java can run it, else Tansu. Input records carry the time
they were produced; the output topic stamps each record with the broker's
append time (`LogAppendTime`), which is when the output was acknowledged. Their
difference is an event's end-to-end latency, exact to the millisecond, without
touching the worker.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from tqdm import tqdm

from bench.report import ScoreMap
from bench.serve import ServeSpec
from tests.brokers import apache_kafka
from worker.embedded.base import EmbeddedBroker, log_tail
from worker.embedded.tansu import TansuBroker

# Two, so that a second worker process gets a partition of its own.
INPUT_PARTITIONS = 2
# The output topic stamps records with the broker's time of append: the acknowledgement.
OUTPUT_TOPIC_CONFIG = {"message.timestamp.type": "LogAppendTime"}
CREATE_TIMEOUT_S = 30.0
# Loading a 1 GB model and joining the group; slow on a busy two-core machine.
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 120.0
# How long to wait for outputs, per event still expected: a long text on a busy
# CPU takes several seconds.
OUTPUT_TIMEOUT_PER_EVENT_S = 30.0
OUTPUT_TIMEOUT_MIN_S = 120.0
POLL_S = 0.2
MS = 1000.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running_broker() -> Iterator[EmbeddedBroker]:
    """Apache Kafka (the reference broker) where Java can run it, else Tansu."""
    broker: EmbeddedBroker = (
        apache_kafka.ApacheKafkaBroker() if apache_kafka.can_run() else TansuBroker()
    )
    with broker:
        yield broker


@dataclass(frozen=True, slots=True)
class Topics:
    """A fresh input, output and dead-letter topic per measurement."""

    input: str
    output: str

    @classmethod
    def create(cls, bootstrap_servers: str) -> Topics:
        """Create the three topics with the partitions and timestamps the benchmark needs."""
        suffix = uuid.uuid4().hex[:8]
        topics = cls(input=f"bench-in-{suffix}", output=f"bench-out-{suffix}")
        admin = AdminClient({"bootstrap.servers": bootstrap_servers})
        futures = admin.create_topics(
            [
                NewTopic(topics.input, INPUT_PARTITIONS, 1),
                NewTopic(topics.output, 1, 1, config=OUTPUT_TOPIC_CONFIG),
                NewTopic(f"{topics.input}.dlq", 1, 1),
            ],
            operation_timeout=CREATE_TIMEOUT_S,
        )
        for future in futures.values():
            future.result(timeout=CREATE_TIMEOUT_S)
        return topics


@dataclass(frozen=True, slots=True)
class Output:
    """An enriched event read back, with its broker timestamp."""

    timestamp_ms: int
    append_time: bool
    scores: ScoreMap


class OutputReader:
    """Reads the output topic from its start, keeping each event's output by id."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": f"bench-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        # Assigned, not subscribed: no group join to wait for.
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self.outputs: dict[str, Output] = {}

    def wait_for(self, ids: Sequence[str]) -> dict[str, Output]:
        """Block until every id in `ids` has its output; raise if they do not come in time.

        A progress bar counts the outputs on a terminal.
        """
        wanted = set(ids)
        deadline = time.monotonic() + max(
            OUTPUT_TIMEOUT_MIN_S, OUTPUT_TIMEOUT_PER_EVENT_S * len(wanted)
        )
        with tqdm(
            total=len(wanted), unit="event", leave=False, disable=not sys.stderr.isatty()
        ) as bar:
            while not wanted <= self.outputs.keys():
                if time.monotonic() > deadline:
                    missing = len(wanted - self.outputs.keys())
                    raise TimeoutError(f"{missing} of {len(wanted)} outputs did not arrive in time")
                message = self._consumer.poll(POLL_S)
                if message is None or message.error() is not None:
                    continue
                event = orjson.loads(message.value() or b"{}")
                kind, timestamp = message.timestamp()
                classification = event["classification"]
                labels, scores = classification["labels"], classification["scores"]
                self.outputs[event["id"]] = Output(
                    timestamp_ms=timestamp,
                    append_time=kind == TIMESTAMP_LOG_APPEND_TIME,
                    scores=dict(zip(labels, scores, strict=True)),
                )
                bar.update(len(wanted & self.outputs.keys()) - bar.n)
        return {i: self.outputs[i] for i in ids}

    def close(self) -> None:
        """Leave the broker."""
        self._consumer.close()


def produce(
    bootstrap_servers: str, topic: str, events: Sequence[tuple[str, str]], rate: float | None = None
) -> dict[str, int]:
    """Produce `(id, text)` events, all at once or `rate` per second; their timestamps in ms.

    Events alternate between the input partitions so that two workers share them.
    """
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 0})
    stamps: dict[str, int] = {}
    started = time.monotonic()
    for n, (event_id, text) in enumerate(events):
        if rate:
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
        stamps[event_id] = int(time.time() * MS)
        producer.produce(
            topic,
            orjson.dumps({"id": event_id, "text": text}),
            key=event_id.encode(),
            partition=n % INPUT_PARTITIONS,
            timestamp=stamps[event_id],
        )
        producer.poll(0)
    if producer.flush(CREATE_TIMEOUT_S):
        raise RuntimeError("the benchmark's input records were not all acknowledged")
    return stamps


@dataclass(slots=True)
class WorkerProcess:
    """One `bench.serve` child process and the files it reports through."""

    process: subprocess.Popen[bytes]
    status: Path
    stats: Path
    log: Path

    def assigned(self) -> int:
        """How many input partitions the process owns now."""
        with contextlib.suppress(FileNotFoundError, ValueError):
            return len(orjson.loads(self.status.read_bytes())["assigned"])
        return 0

    def cpu_seconds(self) -> float:
        """User and system CPU time of the process so far (Linux: from /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of stat(5); the split starts at field 3.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def check_alive(self) -> None:
        """Raise if the process has exited, with the end of its output."""
        if self.process.poll() is not None:
            raise RuntimeError(
                f"a benchmark worker exited with code {self.process.returncode}:\n"
                f"{log_tail(self.log)}"
            )


@contextlib.contextmanager
def worker_processes(spec: ServeSpec, count: int, scratch: Path) -> Iterator[list[WorkerProcess]]:
    """Start `count` workers in one group; yield once every one owns a partition.

    On leaving, each is stopped with SIGTERM (a clean shutdown) and its stats
    file, written on the way out, is left in `scratch`.
    """
    workers: list[WorkerProcess] = []
    try:
        for n in range(count):
            own = replace(
                spec,
                status_path=str(scratch / f"status-{n}.json"),
                stats_path=str(scratch / f"stats-{n}.json"),
            )
            spec_path = own.write(scratch / f"spec-{n}.json")
            log = scratch / f"worker-{n}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    [sys.executable, "-m", "bench.serve", str(spec_path)],
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            workers.append(WorkerProcess(process, Path(own.status_path), Path(own.stats_path), log))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while sum(w.assigned() for w in workers) < INPUT_PARTITIONS or not all(
            w.assigned() for w in workers
        ):
            for w in workers:
                w.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("the benchmark workers did not get their partitions in time")
            time.sleep(POLL_S)
        yield workers
    finally:
        for w in workers:
            if w.process.poll() is None:
                w.process.terminate()
        for w in workers:
            try:
                w.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()


@dataclass(slots=True)
class EndToEnd:
    """What one end-to-end measurement saw."""

    events: int
    outputs: dict[str, Output]
    append_time: bool
    # CPU time the worker processes spent on the timed events (the broker's not counted).
    cpu_seconds: float
    window: tuple[float, float]
    """The timed events' wall-clock span: the first one produced, the last output acknowledged."""
    backlog_latencies_s: list[float] = field(default_factory=list)
    """Each timed event's latency, all of them produced at once."""
    latencies_s: list[float] = field(default_factory=list)
    latency_texts: list[str] = field(default_factory=list)
    """The paced events' texts, in the order of `latencies_s`."""
    latency_rate: float | None = None
    latency_window: tuple[float, float] | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The timed events' wall-clock time, first production to last acknowledgement."""
        return self.window[1] - self.window[0]

    def forward_seconds(self, window: tuple[float, float] | None) -> list[float]:
        """Durations of the forward passes that ended inside `window` (wall-clock seconds)."""
        return [
            f["seconds"]
            for s in self.stats
            for f in s["forwards"]
            if window is None or window[0] <= f["ended_at"] <= window[1]
        ]

    def busy_seconds(self) -> float:
        """The worker processes' time inside forward passes over the timed events, summed.

        Against `seconds` it says how much of the wall time the model computed;
        the rest went to Kafka, batching and waiting.
        """
        return sum(self.forward_seconds(self.window))

    def own_forward_seconds(self, text: str, window: tuple[float, float]) -> float | None:
        """How long the forward pass that completed the event of `text` inside `window` took."""
        for s in self.stats:
            for f in s["forwards"]:
                if window[0] <= f["ended_at"] <= window[1] and text in f["texts"]:
                    seconds: float = f["seconds"]
                    return seconds
        return None


def measure(
    spec: ServeSpec,
    warmup: Sequence[str],
    texts: Sequence[str],
    *,
    processes: int = 1,
    latency_texts: Sequence[str] = (),
    latency_load: float | None = None,
) -> EndToEnd:
    """Warm the workers up, time `texts` through them, then optionally a paced latency run.

    Throughput is the measured events over the time from the first one's
    production to the last output's acknowledgement. The latency run produces
    `latency_texts` at `latency_load` times that throughput.
    """
    topics = Topics.create(spec.bootstrap_servers)
    spec = replace(spec, input_topic=topics.input, output_topic=topics.output)
    reader = OutputReader(spec.bootstrap_servers, topics.output)
    with tempfile.TemporaryDirectory(prefix="zsc-bench-") as tmp:
        scratch = Path(tmp)
        try:
            with worker_processes(spec, processes, scratch) as workers:
                warm = [(f"warm-{n}", text) for n, text in enumerate(warmup)]
                produce(spec.bootstrap_servers, topics.input, warm)
                reader.wait_for([i for i, _ in warm])

                timed = [(f"run-{n}", text) for n, text in enumerate(texts)]
                cpu_before = sum(w.cpu_seconds() for w in workers)
                produced = produce(spec.bootstrap_servers, topics.input, timed)
                outputs = reader.wait_for([i for i, _ in timed])
                cpu_after = sum(w.cpu_seconds() for w in workers)
                first = min(produced.values())
                last = max(o.timestamp_ms for o in outputs.values())
                result = EndToEnd(
                    events=len(timed),
                    outputs=outputs,
                    append_time=all(o.append_time for o in outputs.values()),
                    cpu_seconds=cpu_after - cpu_before,
                    window=(first / MS, last / MS),
                    backlog_latencies_s=[
                        (outputs[i].timestamp_ms - produced[i]) / MS for i, _ in timed
                    ],
                )
                if latency_texts and latency_load:
                    rate = latency_load * result.events / result.seconds
                    paced = [(f"lat-{n}", text) for n, text in enumerate(latency_texts)]
                    started = time.time()
                    stamps = produce(spec.bootstrap_servers, topics.input, paced, rate)
                    arrived = reader.wait_for([i for i, _ in paced])
                    result.latencies_s = [
                        (arrived[i].timestamp_ms - stamps[i]) / MS for i, _ in paced
                    ]
                    result.latency_texts = list(latency_texts)
                    result.latency_rate = rate
                    result.latency_window = (started, time.time())
        finally:
            reader.close()
        result.stats = [
            orjson.loads(path.read_bytes()) for path in sorted(scratch.glob("stats-*.json"))
        ]
    return result
