"""Client errors and broker probing: what a Kafka client's error means for the worker.

Readiness follows the broker: an error that says no broker can be reached
marks it down, and while it is down a metadata request now and then checks
whether one answers again. A consumer error librdkafka calls fatal stops the
worker. The producer's fatal error never comes through here: confluent-kafka
raises it from poll or flush, and the delivery handles it (see
worker.kafka.clients.serve).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException

from worker import errors
from worker.kafka.clients import broker_unreachable
from worker.metrics import Health

log = logging.getLogger(__name__)

# While no broker is reachable, how often a metadata request checks whether one
# answers again, and how long it may block the loop (nothing flows meanwhile).
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 0.25


class Connectivity:
    """Takes the clients' error callbacks; `failure` is set when the worker must stop."""

    def __init__(self, health: Health, probe_topic: str, clock: Callable[[], float]) -> None:
        self._health = health
        self._probe_topic = probe_topic
        self._clock = clock
        self._next_probe_at = 0.0
        self.failure: errors.ZscError | None = None

    def on_consumer_error(self, error: KafkaError) -> None:
        """The consumer's error callback (served by poll), and errors that poll hands out or
        raises. A fatal one (a static member fenced by another with its `group.instance.id`,
        say) leaves a consumer that would go on reading as a zombie: the worker stops."""
        if error.fatal() or error.code() == KafkaError._FATAL:
            self.failure = errors.KafkaError(
                f"the consumer failed: {error.str()}", code=error.code(), retriable=False
            )
        else:
            self._on_client_error(error)

    def on_producer_error(self, error: KafkaError) -> None:
        """The producer's error callback (served by poll and flush)."""
        self._on_client_error(error)

    def probe(self, consumer: Consumer) -> None:
        """While no broker is reachable, ask for metadata now and then: ready again if it comes."""
        now = self._clock()
        if self._health.broker_reachable.is_set() or now < self._next_probe_at:
            return
        self._next_probe_at = now + PROBE_INTERVAL_S
        try:
            consumer.list_topics(self._probe_topic, timeout=PROBE_TIMEOUT_S)
        except KafkaException:
            return
        self._health.broker_up()

    def _on_client_error(self, error: KafkaError) -> None:
        if broker_unreachable(error):
            self._health.broker_down(error.str())
        else:
            log.warning("kafka: %s", error.str())
