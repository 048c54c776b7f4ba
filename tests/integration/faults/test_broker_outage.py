"""The broker vanishes behind a proxy for 15 s while events flow: the worker waits it out."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient

from tests.brokers import apache_kafka
from tests.brokers.apache_kafka import ApacheKafkaBroker
from tests.integration.conftest import NameFactory
from tests.integration.faults.conftest import EventTopics, FaultRow, Recorder
from tests.integration.faults.proxy import FlakyProxy
from tests.integration.faults.support import EventStream, Tally, topics_config
from tests.integration.harness import RunningWorker, make_settings
from worker.embedded.base import LOOPBACK, free_loopback_ports
from worker.metrics import MetricsServer
from worker.nli.fake import FakeClassifier

PARTITIONS = 3
EVENTS = 1500
EVENTS_PER_S = 50.0
CUT_AT_S = 8.0
OUTAGE_S = 15.0
# librdkafka notices dropped connections at once; a few seconds is generous.
NOT_READY_WITHIN_S = 5.0
# Reconnect back-off tops out at 10 s (reconnect.backoff.max.ms); the probe
# runs every second after that.
READY_AGAIN_WITHIN_S = 20.0
DRAIN_TIMEOUT_S = 90.0
READYZ_INTERVAL_S = 0.2


@pytest.fixture(scope="module")
def proxied_broker() -> Iterator[tuple[str, FlakyProxy, str]]:
    """A broker of its own behind a proxy: (bootstrap via the proxy, the proxy, direct)."""
    if not apache_kafka.can_run():
        pytest.skip("needs Java 17+ to start a broker that advertises the proxy's address")
    [proxy_port] = free_loopback_ports(1)
    advertised = {"advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{proxy_port}"}
    with ApacheKafkaBroker(overrides=advertised) as broker:
        direct_port = int(broker.bootstrap_servers.rsplit(":", 1)[1])
        with FlakyProxy(proxy_port, direct_port) as proxy:
            yield f"{LOOPBACK}:{proxy_port}", proxy, broker.bootstrap_servers


class ReadinessProbe:
    """Asks /readyz every 200 ms on a thread; remembers when it answered what."""

    def __init__(self, port: int) -> None:
        self._url = f"http://{LOOPBACK}:{port}/readyz"
        self.answers: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="readyz", daemon=True)

    def __enter__(self) -> ReadinessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def first(self, status: int, after: float) -> float | None:
        """When /readyz first answered `status` at or after `after` (monotonic), if it did."""
        return next((at for at, got in list(self.answers) if at >= after and got == status), None)

    def _run(self) -> None:
        while not self._stop.wait(READYZ_INTERVAL_S):
            try:
                with urllib.request.urlopen(self._url, timeout=2) as response:
                    status = response.status
            except urllib.error.HTTPError as error:
                status = error.code
            self.answers.append((time.monotonic(), status))


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_broker_outage_not_ready_meanwhile_recovers_by_itself(
    guarantee: str,
    proxied_broker: tuple[str, FlakyProxy, str],
    event_topics: EventTopics,
    unique_name: NameFactory,
    record_fault: Recorder,
) -> None:
    bootstrap_servers, proxy, direct = proxied_broker
    source, sink, dlq = event_topics(PARTITIONS, admin=AdminClient({"bootstrap.servers": direct}))
    settings = make_settings(
        bootstrap_servers,
        unique_name("g"),
        topics_config(source, sink, dlq),
        processing_guarantee=guarantee,
    )
    worker = RunningWorker(settings, FakeClassifier())
    server = MetricsServer(worker.worker.metrics, worker.worker.health, 0, host=LOOPBACK)
    server.start()
    started = time.monotonic()
    try:
        with (
            ReadinessProbe(server.port) as readiness,
            Tally(bootstrap_servers, [sink, dlq]) as tally,
        ):
            worker.start().wait_for_assignment()
            stream = EventStream(bootstrap_servers, source, EVENTS, EVENTS_PER_S).start()
            time.sleep(CUT_AT_S)
            assert worker.worker.health.ready
            cut_at = time.monotonic()
            proxy.cut()
            time.sleep(OUTAGE_S)
            restored_at = time.monotonic()
            proxy.restore()
            stream.join()
            tally.wait_for(range(EVENTS), DRAIN_TIMEOUT_S)
            worker.stop()  # re-raises whatever the worker failed with: it must not have
            lost = tally.missing(range(EVENTS))
            duplicates = tally.duplicates()
            outputs = tally.total()
    finally:
        server.stop()

    record_fault(
        FaultRow(
            "broker unreachable (proxy drops all connections)",
            guarantee,
            f"{EVENTS_PER_S:.0f} events/s, {PARTITIONS} partitions",
            f"{OUTAGE_S:.0f} s outage",
            EVENTS,
            outputs,
            duplicates,
            len(lost),
            time.monotonic() - started,
        )
    )
    not_ready_at = readiness.first(503, after=cut_at)
    assert not_ready_at is not None and not_ready_at - cut_at < NOT_READY_WITHIN_S, (
        "/readyz reports not-ready soon after the broker became unreachable"
    )
    assert not_ready_at < restored_at
    ready_again_at = readiness.first(200, after=restored_at)
    assert ready_again_at is not None and ready_again_at - restored_at < READY_AGAIN_WITHIN_S
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:10]}"
    if guarantee == "exactly-once":
        assert duplicates == 0, "a read_committed reader sees every output once"
