"""Brokers of a three-node cluster killed or restarted under a worker while events flow.

Input and output topics have 6 partitions with 3 replicas and min ISR 2, and
so do the offsets and transaction-state topics: whichever node goes, writes
go on once its partitions have new leaders, and the group and transaction
coordinators move with them. The worker runs with its default timeouts (no
short session timeout: that is a concession to Tansu, and these brokers are
Apache Kafka's), a single member without static membership, as a deployment
that sets nothing would. It must lose nothing, a read_committed reader must
see nothing twice under exactly-once, it must never exit, and every event
produced before the cluster is whole again must have its output within
`CATCH_UP_S` of that: a worker that stalls fails, even if it would resume
after minutes.

One stall is known and not the worker's: librdkafka's
`send_offsets_to_transaction` can hang past its timeout once the group
coordinator it cached is gone (`LIBRDKAFKA_COORDINATOR_HANG`, reproduced
without the worker by the last test here). The worker replaces a producer
stuck in that call after 30 s, so exactly-once outputs resume, late. A stall
whose worker log shows that replacement makes its scenario xfail, once
delivery itself has been checked; any other stall fails.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from tests.brokers.cluster import KafkaCluster
from tests.integration.conftest import NameFactory, TopicFactory
from tests.integration.faults.conftest import EventTopics, FaultRow, Recorder
from tests.integration.faults.support import (
    EXIT_MARGIN_S,
    EventStream,
    Tally,
    WorkerProcess,
    output_ends,
    topics_config,
    wait_until,
    worker_processes,
    write_config,
)
from tests.integration.harness import committed

PARTITIONS = 6
EVENTS_PER_S = 80.0
# An upper bound: the stream stops once the faults are over.
MAX_EVENTS = 100_000
# Events flow through a settled worker before the first fault.
WARM_UP_S = 4.0
# A killed node stays down longer than the brokers' session
# (broker.session.timeout.ms, 9 s): the controller fences it and its
# partitions get new leaders while it is away, as after a real crash.
KILLED_FOR_S = 12.0
# A node stopped cleanly hands its leaderships over before it exits; a
# rolling restart brings it back after a short while.
STOPPED_FOR_S = 4.0
# Load between one node's return and the next fault.
BETWEEN_FAULTS_S = 3.0
# Once the cluster is whole again, the outputs of every event produced so far
# must come within this: lag back near zero, not a stall.
CATCH_UP_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 60.0
LOG_TAIL_CHARS = 4000

LIBRDKAFKA_COORDINATOR_HANG = (
    "librdkafka (2.16, confluent-kafka 2.16.2) hangs in send_offsets_to_transaction, "
    "whatever its timeout, when the group coordinator it cached was decommissioned "
    "(KRaft leaves a fenced broker out of metadata, and librdkafka then drops it): "
    "confluentinc/librdkafka#5511 and #5456, fixes not released"
)
# What the worker logs when it replaces a producer stuck in that call
# (worker.checkpoint, SEND_OFFSETS_DEADLINE_S): the known stall's signature.
STUCK_OFFSETS_SIGNATURE = "sending the offsets took over"
# The reproduction's call gets the worker's own bound on it (worker.checkpoint),
# and must return (or fail) well within the second figure.
CALL_TIMEOUT_S = 2.0
CALL_RETURNS_WITHIN_S = 10.0
ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Stall:
    """Events still without output `CATCH_UP_S` after the cluster was whole again."""

    after: str
    missing: int
    produced: int
    diagnosis: str
    log_since_fault: str

    @property
    def known(self) -> bool:
        """Whether the worker replaced a producer stuck in librdkafka's known hang."""
        return STUCK_OFFSETS_SIGNATURE in self.log_since_fault


class Failover:
    """One scenario on the cluster: a worker, steady load and a tally, checked after each fault.

    Use as a context manager: the worker, the load and the tally run inside the
    block; faults are `kill_and_restart` and `stop_and_restart`; `finish`
    drains, stops the worker, records the scenario's row and checks delivery.
    """

    def __init__(
        self,
        scenario: str,
        guarantee: str,
        cluster: KafkaCluster,
        event_topics: EventTopics,
        unique_name: NameFactory,
        directory: Path,
    ) -> None:
        self.scenario = scenario
        self.guarantee = guarantee
        self.cluster = cluster
        self.source, self.sink, self.dlq = event_topics(PARTITIONS, admin=cluster.admin)
        self.group = unique_name("g")
        config = write_config(
            directory,
            cluster.bootstrap_servers,
            self.group,
            topics_config(self.source, self.sink, self.dlq),
            session_timeout_ms=None,
            processing_guarantee=guarantee,
            shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
        )
        self.worker = WorkerProcess(config, directory / "worker.log")
        self.stream = EventStream(cluster.bootstrap_servers, self.source, MAX_EVENTS, EVENTS_PER_S)
        self.tally = Tally(cluster.bootstrap_servers, [self.sink, self.dlq])
        self.catch_ups: list[float] = []
        self.faults: list[str] = []
        self.stalls: list[Stall] = []
        self._log_at_fault = 0
        self._started = time.monotonic()
        self._cleanup = contextlib.ExitStack()

    def __enter__(self) -> Failover:
        with contextlib.ExitStack() as stack:
            stack.enter_context(worker_processes(self.worker))
            stack.enter_context(self.tally)
            self.worker.start().wait_for_log(f"assigned {self.source}[")
            self.stream.start()
            # A failed scenario must not leave its load running into the next one.
            stack.callback(self._stop_stream)
            time.sleep(WARM_UP_S)
            self._cleanup = stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._cleanup.close()

    @property
    def topics(self) -> list[str]:
        """The input and output topics: whose leaders the faults go after."""
        return [self.source, self.sink]

    def kill_and_restart(self, node: int) -> None:
        """SIGKILL `node`, start it again after `KILLED_FOR_S`, then check the worker caught up."""
        self._fault_and_restart(node, signal.SIGKILL, KILLED_FOR_S)

    def stop_and_restart(self, node: int) -> None:
        """SIGTERM `node`, start it again after `STOPPED_FOR_S`, then check the worker caught up."""
        self._fault_and_restart(node, signal.SIGTERM, STOPPED_FOR_S)

    def _fault_and_restart(self, node: int, signum: signal.Signals, down_s: float) -> None:
        self._log_at_fault = len(self.worker.log())
        if signum is signal.SIGKILL:
            self.cluster.kill(node)
        else:
            self.cluster.terminate(node)
        self.faults.append(f"{signum.name} {node}")
        time.sleep(down_s)
        self._restart(node)

    def finish(self, record_fault: Recorder) -> None:
        """Stop the load, wait for its outputs, stop the worker, record the row, check it all."""
        events = self.stream.stop()
        self.tally.wait_for(range(events), DRAIN_TIMEOUT_S)
        self._check_alive("at the end")
        code, _ = self.worker.terminate(SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S)
        lost = self.tally.missing(range(events))
        duplicates = self.tally.duplicates()
        record_fault(
            FaultRow(
                f"{self.scenario} (3 nodes, RF 3, min ISR 2, default timeouts): caught up "
                f"{max(self.catch_ups):.0f} s at most after the cluster was whole",
                self.guarantee,
                f"{EVENTS_PER_S:.0f} events/s, {PARTITIONS} partitions",
                ", ".join(self.faults),
                events,
                self.tally.total(),
                duplicates,
                len(lost),
                time.monotonic() - self._started,
            )
        )
        unexplained = [stall for stall in self.stalls if not stall.known]
        assert not unexplained, "\n\n".join(
            f"{stall.missing} of the {stall.produced} events produced before the cluster was "
            f"whole again after {stall.after} had no output {CATCH_UP_S:.0f} s later\n"
            f"{stall.diagnosis}"
            for stall in unexplained
        )
        assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:10]}"
        if self.guarantee == "exactly-once":
            assert duplicates == 0, "a read_committed reader sees every output once"
        assert all(seen.error_type is None for seen in self.tally.records), "nothing dead-lettered"
        assert code == 0, (
            f"SIGTERM stops the worker cleanly:\n{self.worker.log()[-LOG_TAIL_CHARS:]}"
        )
        if self.stalls:
            pytest.xfail(
                f"outputs stalled over {CATCH_UP_S:.0f} s after "
                f"{'; '.join(stall.after for stall in self.stalls)}: {LIBRDKAFKA_COORDINATOR_HANG}"
            )

    def diagnosis(self) -> str:
        """Where the group and the outputs stand, and the worker's last words."""
        servers = self.cluster.bootstrap_servers
        return (
            f"committed offsets of {self.source}: "
            f"{committed(servers, self.group, self.source, PARTITIONS)}\n"
            f"{output_ends(servers, self.sink, PARTITIONS)}\n"
            f"records the tally read: {self.tally.total()}\n"
            f"leaders: {self.cluster.leaders(self.topics)}\n"
            f"worker log:\n{self.worker.log()[-LOG_TAIL_CHARS:]}"
        )

    def _restart(self, node: int) -> None:
        self._check_alive(f"while node {node} was down")
        self.cluster.restart(node)
        self.cluster.wait_until_replicated()
        whole_at = time.monotonic()
        produced = self.stream.produced
        self.tally.wait_for(range(produced), CATCH_UP_S, settle_s=0.0)
        if missing := self.tally.missing(range(produced)):
            # Judged at the end, after delivery: first see whether it resumes at all.
            self.tally.wait_for(range(produced), DRAIN_TIMEOUT_S, settle_s=0.0)
            stall = Stall(
                ", ".join(self.faults),
                len(missing),
                produced,
                self.diagnosis(),
                self.worker.log()[self._log_at_fault :],
            )
            self.stalls.append(stall)
        self.catch_ups.append(time.monotonic() - whole_at)
        self._check_alive(f"after node {node} came back")
        time.sleep(BETWEEN_FAULTS_S)

    def _check_alive(self, when: str) -> None:
        assert self.worker.alive, f"the worker exited {when}:\n{self.diagnosis()}"

    def _stop_stream(self) -> None:
        with contextlib.suppress(AssertionError):  # its failures are reported elsewhere
            self.stream.stop()


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_the_busiest_leader_then_the_group_coordinator_killed(
    guarantee: str,
    kafka_cluster: KafkaCluster,
    event_topics: EventTopics,
    unique_name: NameFactory,
    record_fault: Recorder,
    tmp_path: Path,
) -> None:
    scenario = (
        "SIGKILL of the node leading most partitions, then of the group's coordinator"
        " (another node), 12 s down, restart"
    )
    with Failover(scenario, guarantee, kafka_cluster, event_topics, unique_name, tmp_path) as run:
        first = kafka_cluster.busiest_node(run.topics)
        run.kill_and_restart(first)
        # The coordinator's crash every time: the group and the transactions must
        # find the new one (the first victim leads nothing since its restart).
        second = kafka_cluster.group_coordinator(run.group)
        if second == first:
            second = kafka_cluster.busiest_node(run.topics, besides=[first])
        run.kill_and_restart(second)
        run.finish(record_fault)


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_a_rolling_restart_of_every_node(
    guarantee: str,
    kafka_cluster: KafkaCluster,
    event_topics: EventTopics,
    unique_name: NameFactory,
    record_fault: Recorder,
    tmp_path: Path,
) -> None:
    scenario = "rolling restart: SIGTERM, restart, ISR whole, next node"
    with Failover(scenario, guarantee, kafka_cluster, event_topics, unique_name, tmp_path) as run:
        for node in sorted(kafka_cluster.nodes):
            run.stop_and_restart(node)
        run.finish(record_fault)


@pytest.mark.xfail(strict=True, reason=LIBRDKAFKA_COORDINATOR_HANG)
def test_send_offsets_to_transaction_returns_after_the_group_coordinator_died(
    kafka_cluster: KafkaCluster, create_topics: TopicFactory, unique_name: NameFactory
) -> None:
    """The stall of the exactly-once scenarios, without the worker: librdkafka alone."""
    cluster = kafka_cluster
    source, sink = create_topics([unique_name("in"), unique_name("out")], admin=cluster.admin)
    group = Consumer({"bootstrap.servers": cluster.bootstrap_servers, "group.id": unique_name("g")})
    producer = Producer(
        {"bootstrap.servers": cluster.bootstrap_servers, "transactional.id": unique_name("t")}
    )
    producer.init_transactions(ADMIN_TIMEOUT_S)

    def send_offsets(offset: int) -> bool:
        """One transaction with one output and the offset; whether the offsets call returned."""
        producer.begin_transaction()
        producer.produce(sink, b"output")
        assert producer.flush(ADMIN_TIMEOUT_S) == 0
        offsets = [TopicPartition(source, 0, offset)]
        metadata = group.consumer_group_metadata()

        def call() -> None:
            # A retriable error is an answer too: only a call that never returns stalls.
            with contextlib.suppress(KafkaException):
                producer.send_offsets_to_transaction(offsets, metadata, CALL_TIMEOUT_S)

        # On a thread: a hung call cannot be interrupted, only left behind.
        caller = threading.Thread(target=call, name="send-offsets", daemon=True)
        caller.start()
        caller.join(CALL_RETURNS_WITHIN_S)
        return not caller.is_alive()

    # The producer finds the group coordinator and caches it.
    assert send_offsets(1)
    producer.commit_transaction(ADMIN_TIMEOUT_S)
    coordinator = cluster.leaders(["__consumer_offsets"])[("__consumer_offsets", 0)]
    assert coordinator is not None
    cluster.kill(coordinator)
    try:
        # Fenced: metadata leaves it out from now on, and a new coordinator leads.
        wait_until(
            lambda: coordinator not in cluster.admin.list_topics(timeout=ADMIN_TIMEOUT_S).brokers,
            ADMIN_TIMEOUT_S,
            f"node {coordinator} to be fenced",
        )
        # A metadata response without it: the producer decommissions it.
        producer.list_topics(timeout=ADMIN_TIMEOUT_S)
        assert send_offsets(2), (
            f"send_offsets_to_transaction({CALL_TIMEOUT_S:.0f} s) had not returned "
            f"{CALL_RETURNS_WITHIN_S:.0f} s after group coordinator {coordinator} died"
        )
    finally:
        cluster.restore()
