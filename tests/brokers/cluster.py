"""A three-node Apache Kafka KRaft cluster on loopback, for failover tests.

Every node is broker and controller at once (three JVMs, one static quorum of
three voters), built from the same jars as `apache_kafka.ApacheKafkaBroker`.
Topics get three replicas and take writes while two of them are in sync, as a
production cluster would configure them; the offsets and transaction-state
topics too, so losing any one node loses neither the group coordinator nor
the transaction coordinator for good, only until a new leader is elected.

A node can be killed (SIGKILL) or stopped (SIGTERM, a controlled shutdown)
and started again on the same ports with the same data directory: what a
broker restart or a rolling upgrade does to clients.

Usage::

    with KafkaCluster() as cluster:
        node = cluster.busiest_node([topic])
        cluster.kill(node)
        cluster.restart(node)
        cluster.wait_until_replicated()
"""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, TopicMetadata

from tests.brokers.apache_kafka import (
    DEFAULT_JVM_OPTIONS,
    FORMAT_JVM_OPTIONS,
    FORMAT_TIMEOUT_S,
    STOP_TIMEOUT_S,
    fetch,
    java_executable,
    new_cluster_id,
    server_properties,
)
from worker.embedded.base import LOG_FILE_NAME, LOOPBACK, free_loopback_ports, log_tail
from worker.errors import BrokerError

NODES = 3
"""The smallest cluster that survives losing a node with min ISR 2 and a controller majority."""

MIN_INSYNC_REPLICAS = 2
"""acks=all writes (idempotent producers, offset commits, transactions) need two copies."""

CLUSTER_JVM_OPTIONS: tuple[str, ...] = (
    # Three brokers share a CI runner (two cores, 24 GiB) with the worker and a
    # model: a smaller heap than a single node's still holds the tests' traffic.
    "-Xmx384m",
    # C1 only: three JVMs compiling with C2 at once would take the CPU the
    # tests measure; these brokers serve tests, not benchmarks.
    "-XX:TieredStopAtLevel=1",
    *(option for option in DEFAULT_JVM_OPTIONS if not option.startswith("-Xmx")),
)

READY_TIMEOUT_S = 120.0
"""Until every node is registered and unfenced, or every replica is back in sync."""

_POLL_INTERVAL_S = 0.2
_ADMIN_TIMEOUT_S = 10.0
"""One admin request; a cluster that lost a node answers once a new leader is elected."""


def replication_properties(nodes: int = NODES) -> dict[str, str]:
    """Replication settings of a production-like cluster of `nodes` nodes.

    Every topic, the internal ones included, keeps a copy on each node and
    takes acks=all writes while `MIN_INSYNC_REPLICAS` copies are in sync.
    """
    replicas, min_isr = str(nodes), str(MIN_INSYNC_REPLICAS)
    return {
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
    }


class ClusterNode:
    """One node of the cluster: its ports, its directory (config, data, log) and its process."""

    def __init__(self, node_id: int, port: int, controller_port: int, directory: Path) -> None:
        self.node_id = node_id
        self.port = port
        self.controller_port = controller_port
        self.directory = directory
        self.config_path = directory / "server.properties"
        self.log_path = directory / LOG_FILE_NAME
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        """`host:port` of the node's client listener."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the node's process is alive."""
        return self._process is not None and self._process.poll() is None

    def launch(self, command: Sequence[str]) -> None:
        """Start the process, appending its output to the node's log (kept across restarts)."""
        if self.running:
            raise BrokerError(f"node {self.node_id} is already running")
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        try:
            self._process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        except OSError as exc:
            raise BrokerError(f"cannot run node {self.node_id}: {exc}") from None

    def signal(self, signum: signal.Signals) -> None:
        """Send `signum` to the process, if it runs."""
        if self.running:
            assert self._process is not None
            self._process.send_signal(signum)

    def wait(self, timeout_s: float) -> None:
        """Wait for the process to exit (SIGKILL it after `timeout_s`); the node is down then."""
        process, self._process = self._process, None
        if process is not None:
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_log()

    def check_alive(self, doing: str) -> None:
        """Raise `BrokerError` with the node's log tail if it exited without being stopped."""
        if self._process is not None and (code := self._process.poll()) is not None:
            raise BrokerError(
                f"node {self.node_id} exited with code {code} while {doing}; "
                f"last lines of its log:\n{log_tail(self.log_path)}"
            )

    def accepts_connections(self) -> bool:
        """Whether the client listener is open."""
        with socket.socket() as probe:
            return probe.connect_ex((LOOPBACK, self.port)) == 0

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class KafkaCluster:
    """`nodes` Apache Kafka KRaft nodes, each broker and controller, on free loopback ports.

    Use as a context manager or call `start()` and `stop()`; `stop()` also runs
    at interpreter exit. Nodes are numbered from 1, as `node.id` says.
    """

    def __init__(
        self,
        nodes: int = NODES,
        *,
        jvm_options: Sequence[str] = CLUSTER_JVM_OPTIONS,
        overrides: Mapping[str, str] | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        """`overrides` replaces or adds server.properties entries of every node."""
        self._size = nodes
        self._jvm_options = tuple(jvm_options)
        self._overrides = dict(overrides or {})
        self._ready_timeout_s = ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._workdir: Path | None = None
        self._nodes: dict[int, ClusterNode] = {}
        self._command: list[str] = []
        self._admin: AdminClient | None = None

    @property
    def nodes(self) -> Mapping[int, ClusterNode]:
        """The nodes by id."""
        return self._nodes

    @property
    def bootstrap_servers(self) -> str:
        """Every node's client address: clients find the cluster whichever node is down."""
        if not self._nodes:
            raise BrokerError("the cluster is not running")
        return ",".join(node.address for node in self._nodes.values())

    @property
    def admin(self) -> AdminClient:
        """An AdminClient of the cluster."""
        if self._admin is None:
            raise BrokerError("the cluster is not running")
        return self._admin

    def start(self) -> Self:
        """Format every node's storage once, start them all, and wait until all are brokers."""
        if self._workdir is not None:
            raise BrokerError("the cluster is already started")
        self._workdir = Path(tempfile.mkdtemp(prefix="zsc-kafka-cluster-"))
        atexit.register(self.stop)
        try:
            java = java_executable()
            if java is None:
                raise BrokerError("cannot start Kafka: no `java` on the PATH or in JAVA_HOME")
            classpath = str(fetch() / "*")
            ports = free_loopback_ports(2 * self._size)
            for node_id in range(1, self._size + 1):
                directory = self._workdir / f"node-{node_id}"
                directory.mkdir()
                port, controller_port = ports[2 * node_id - 2 : 2 * node_id]
                self._nodes[node_id] = ClusterNode(node_id, port, controller_port, directory)
            voters = ",".join(
                f"{node.node_id}@{LOOPBACK}:{node.controller_port}" for node in self._nodes.values()
            )
            for node in self._nodes.values():
                properties = server_properties(
                    port=node.port,
                    controller_port=node.controller_port,
                    log_dir=node.directory / "data",
                    overrides={**replication_properties(self._size), **self._overrides},
                    node_id=node.node_id,
                    quorum_voters=voters,
                )
                node.config_path.write_text(
                    "".join(f"{key}={value}\n" for key, value in properties.items()),
                    encoding="utf-8",
                )
            self._format(java, classpath, new_cluster_id())
            self._command = [java, *self._jvm_options, "-cp", classpath, "kafka.Kafka"]
            # All at once: no node can finish starting before a majority of the
            # controller quorum is up.
            for node in self._nodes.values():
                node.launch([*self._command, str(node.config_path)])
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
            self._wait_until(
                lambda: self._registered() >= set(self._nodes),
                "every node is registered",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after the grace period) and delete their files."""
        atexit.unregister(self.stop)
        # First: a client would log every refused connection while the nodes go.
        self._admin = None
        for node in self._nodes.values():
            node.signal(signal.SIGTERM)
        for node in self._nodes.values():
            node.wait(self._stop_timeout_s)
        self._nodes = {}
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def kill(self, node_id: int) -> None:
        """SIGKILL a node: no controlled shutdown, its leaderships move only once it is fenced."""
        node = self._nodes[node_id]
        node.signal(signal.SIGKILL)
        node.wait(self._stop_timeout_s)

    def terminate(self, node_id: int) -> None:
        """SIGTERM a node: a controlled shutdown moves its leaderships away before it exits."""
        node = self._nodes[node_id]
        node.signal(signal.SIGTERM)
        node.wait(self._stop_timeout_s)

    def restart(self, node_id: int) -> None:
        """Start a stopped node again, same ports and data, and wait until it is a broker again.

        Its replicas may still be catching up: `wait_until_replicated` waits for that.
        """
        node = self._nodes[node_id]
        node.launch([*self._command, str(node.config_path)])
        self._wait_until(node.accepts_connections, f"node {node_id} listens again")
        self._wait_until(lambda: node_id in self._registered(), f"node {node_id} is registered")

    def restore(self) -> None:
        """Start every stopped node again and wait until every replica is in sync."""
        for node_id, node in self._nodes.items():
            if not node.running:
                self.restart(node_id)
        self.wait_until_replicated()

    def leaders(self, topics: Iterable[str]) -> dict[tuple[str, int], int | None]:
        """Which node leads each partition of `topics` (None: no leader right now)."""
        return {
            (name, partition.id): partition.leader if partition.leader >= 0 else None
            for name, topic in self._describe(topics).items()
            for partition in topic.partitions.values()
        }

    def group_coordinator(self, group: str) -> int:
        """The node coordinating a consumer group (leading its offsets partition)."""
        [future] = self.admin.describe_consumer_groups(
            [group], request_timeout=_ADMIN_TIMEOUT_S
        ).values()
        return int(future.result().coordinator.id)

    def busiest_node(self, topics: Iterable[str], besides: Iterable[int] = ()) -> int:
        """The node leading most partitions of `topics`, other than those in `besides`."""
        excluded = set(besides)
        counts = Counter(
            leader for leader in self.leaders(topics).values() if leader not in (None, *excluded)
        )
        # Nodes leading nothing still count (as 0), so there is always an answer.
        candidates = [node_id for node_id in self._nodes if node_id not in excluded]
        return max(candidates, key=lambda node_id: counts[node_id])

    def under_replicated(self) -> list[str]:
        """Partitions of every topic (internal ones included) whose ISR lacks a replica."""
        return [
            f"{name}[{partition.id}]"
            for name, topic in self._describe().items()
            for partition in topic.partitions.values()
            if partition.leader < 0 or set(partition.isrs) != set(partition.replicas)
        ]

    def wait_until_replicated(self) -> None:
        """Block until every partition of every topic has all its replicas in sync."""

        def replicated() -> bool:
            try:
                return not self.under_replicated()
            except KafkaException:
                return False  # a partition without a leader for a moment

        self._wait_until(replicated, "every replica is in sync")

    def _format(self, java: str, classpath: str, cluster_id: str) -> None:
        """Format every node's storage with one cluster id; in parallel, they are independent."""
        formats = []
        for node in self._nodes.values():
            with open(node.log_path, "ab") as log:
                formats.append(
                    subprocess.Popen(
                        [java, *FORMAT_JVM_OPTIONS, "-cp", classpath,
                         "kafka.tools.StorageTool", "format",
                         # "=": a random id may start with "-", which would read as an option.
                         f"--cluster-id={cluster_id}", "-c", str(node.config_path)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip
        deadline = time.monotonic() + FORMAT_TIMEOUT_S
        for node, process in zip(self._nodes.values(), formats, strict=True):
            try:
                code = process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = None
            if code != 0:
                raise BrokerError(
                    f"formatting node {node.node_id}'s storage failed (exit {code}); "
                    f"last lines of its log:\n{log_tail(node.log_path)}"
                )

    def _registered(self) -> set[int]:
        """The nodes the cluster's metadata lists as brokers (KRaft lists unfenced ones only)."""
        try:
            metadata = self.admin.list_topics(timeout=_ADMIN_TIMEOUT_S)
        except KafkaException:
            return set()  # no quorum yet, or the node asked is still starting
        return set(metadata.brokers)

    def _describe(self, topics: Iterable[str] | None = None) -> dict[str, TopicMetadata]:
        """Leaders, replicas and ISRs of `topics` (default: all), from a metadata request.

        Not `describe_topics`: librdkafka sends that to the node the metadata
        names as controller, which KRaft picks among live brokers but a client
        may still believe to be a dead one; it then waits out its timeout
        reconnecting to the dead node in a busy loop.
        """
        metadata = self.admin.list_topics(timeout=_ADMIN_TIMEOUT_S).topics
        if topics is None:
            return dict(metadata)
        wanted = list(topics)
        missing = [name for name in wanted if name not in metadata]
        if missing:
            raise BrokerError(f"no such topics: {missing}")
        for name in wanted:
            if (error := metadata[name].error) is not None:
                raise KafkaException(error)
        return {name: metadata[name] for name in wanted}

    def _wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` until it holds; fail with every node's log tail at the timeout."""
        deadline = time.monotonic() + self._ready_timeout_s
        while not condition():
            for node in self._nodes.values():
                node.check_alive(f"waiting until {what}")
            if time.monotonic() >= deadline:
                tails = "\n".join(
                    f"--- node {node.node_id}:\n{log_tail(node.log_path, lines=10)}"
                    for node in self._nodes.values()
                )
                raise BrokerError(
                    f"the cluster did not reach '{what}' within {self._ready_timeout_s:.0f} s"
                    f"\n{tails}"
                )
            time.sleep(_POLL_INTERVAL_S)
