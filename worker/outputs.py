"""Outputs: what a scored event becomes (its enriched output and routed copies, or its
dead-letter record), handed to the delivery."""

from __future__ import annotations

import logging

from worker import errors, serde
from worker.classification import classification_of
from worker.delivery import Delivery
from worker.inference import Outcome
from worker.inflight import InFlightEvent, OutRecord, RecordKind
from worker.kafka.records import Headers
from worker.models import Models
from worker.nli.base import Scores

log = logging.getLogger(__name__)

# Headers of a dead-lettered record, all under one prefix: `zsc-worker replay`
# strips every header with it before sending a record back.
WORKER_HEADER_PREFIX = "zsc."
ERROR_TYPE = "zsc.error.type"
ERROR_MESSAGE = "zsc.error.message"
SOURCE_TOPIC = "zsc.source.topic"
SOURCE_PARTITION = "zsc.source.partition"
SOURCE_OFFSET = "zsc.source.offset"


class Outputs:
    """Builds each event's records and sends them; a record refused for good is replaced by
    the event's dead-letter record."""

    def __init__(self, delivery: Delivery, models: Models) -> None:
        self._delivery = delivery
        self._models = models
        self.failure: errors.ZscError | None = None
        """Set when a dead-letter topic refuses even a record without its value."""

    def publish(self, event: InFlightEvent, outcome: Outcome) -> None:
        """Produce what the event became: its output, or its dead-letter record."""
        if event.rejection is not None:
            self._dead_letter(event, event.rejection)
        elif isinstance(outcome, Scores):
            self._output(event, outcome)
        else:
            reason = serde.Rejection(serde.INFERENCE_FAILED, f"the model failed: {outcome}")
            self._dead_letter(event, reason)

    def send_again(self, records: list[OutRecord]) -> None:
        """Produce records whose delivery failed once more."""
        for record in records:
            self._send(record)

    def _output(self, event: InFlightEvent, scores: Scores) -> None:
        assert event.decoded is not None and event.encoded is not None
        route, task = event.route, event.encoded.task
        classifier = self._models.of_topic(event.topic)
        result = classification_of(
            route,
            task,
            scores,
            model=classifier.model_name,
            label_ids=classifier.label_ids,
            source=event.source,
        )
        value = event.decoded.output(result)
        if isinstance(value, serde.Rejection):
            self._dead_letter(event, value)
            return
        scores_by_label = dict(zip(task.labels, scores.scores, strict=True))
        routed = route.destinations(scores_by_label)
        event.expect(1 + len(routed))
        self._send(OutRecord(event, RecordKind.OUTPUT, route.output, value, event.headers))
        for topic in routed:
            self._send(OutRecord(event, RecordKind.ROUTED, topic, value, event.headers))

    def _dead_letter(
        self, event: InFlightEvent, reason: serde.Rejection, keep_value: bool = True
    ) -> None:
        headers: Headers = [
            *(event.headers or []),
            (ERROR_TYPE, reason.error_type.encode()),
            (ERROR_MESSAGE, reason.message.encode()),
            (SOURCE_TOPIC, event.topic.encode()),
            (SOURCE_PARTITION, str(event.partition).encode()),
            (SOURCE_OFFSET, str(event.offset).encode()),
        ]
        log.warning(
            "dead-lettering %s[%d]@%d: %s",
            event.topic,
            event.partition,
            event.offset,
            reason.error_type,
        )
        event.expect()
        value = event.value if keep_value else None
        record = OutRecord(
            event,
            RecordKind.DEAD_LETTER,
            event.route.dead_letter,
            value,
            headers,
            reason,
            without_value=not keep_value,
        )
        self._send(record)

    def _send(self, record: OutRecord) -> None:
        if (refusal := self._delivery.send(record)) is not None:
            self._refused_for_good(record, refusal)

    def _refused_for_good(self, record: OutRecord, refusal: str) -> None:
        """The topic refused the record itself: dead-letter the event instead.

        A dead-letter record refused for good is sent again without its value
        (too large even there, say): its headers still say where the input is.
        One refused without a value stops the worker (nothing is committed past
        it, so a restart retries it) rather than drop an event silently.
        """
        event, rejection = record.event, record.rejection
        if rejection is not None and record.value is None:
            self.failure = errors.ProduceError(
                f"dead-letter topic {record.topic!r} refused a record: {refusal}"
            )
            return
        # Its replacement settles the event: this record never will be.
        event.settle()
        if rejection is None:
            message = f"the output topic {record.topic!r} refused it: {refusal}"
            self._dead_letter(event, serde.Rejection(serde.OUTPUT_REJECTED, message))
        else:
            assert record.value is not None
            message = (
                f"{rejection.message}; the dead-letter topic refused the value "
                f"({len(record.value)} bytes: {refusal}): read it at the source offset"
            )
            self._dead_letter(event, serde.Rejection(rejection.error_type, message), False)
