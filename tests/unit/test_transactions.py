"""The exactly-once committer's states: commit, retry, abort, replace the producer."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker import transactions
from worker.errors import KafkaError as ZscKafkaError
from worker.offsets import OffsetTracker
from worker.transactions import TransactionalCommitter

TP = ("posts", 0)


def timed_out() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))


def must_abort() -> KafkaException:
    error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "refused", txn_requires_abort=True)
    return KafkaException(error)


def fenced() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))


class StubProducer:
    """Records transactional calls; `fail[name]` lists exceptions its next calls raise."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, list[KafkaException]] = {}
        self.purged = False
        self.undelivered = 0
        self.flush_fails: list[BaseException] = []
        self.hang = threading.Event()
        self.hang.set()

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail.get(name):
            raise self.fail[name].pop(0)

    def init_transactions(self, timeout: float) -> None:
        self._call("init")

    def begin_transaction(self) -> None:
        self._call("begin")

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], metadata: object, timeout: float
    ) -> None:
        self._call("send_offsets")
        self.hang.wait()  # clear() it and the call never returns, as librdkafka's may

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort")

    def purge(self) -> None:
        self.purged = True

    def flush(self, timeout: float) -> int:
        if self.flush_fails:
            raise self.flush_fails.pop(0)
        return self.undelivered


class StubConsumer:
    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(*TP)]

    def consumer_group_metadata(self) -> object:
        return object()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def committer(
    producers: list[StubProducer], clock: Clock | None = None
) -> tuple[TransactionalCommitter, OffsetTracker]:
    """A started committer whose producers come from `producers`, one per make call."""
    tracker = OffsetTracker()
    supply: Callable[[], StubProducer] = iter(producers).__next__
    result = TransactionalCommitter(StubConsumer(), supply, tracker, clock or Clock())  # type: ignore[arg-type]
    result.start()
    return result, tracker


def produce(tracker: OffsetTracker, offset: int) -> None:
    """An output produced for `offset`: under exactly-once that makes the offset done."""
    epoch = tracker.epoch(TP) or tracker.assign(TP)
    tracker.track(TP, offset)
    tracker.ack(TP, offset, epoch)


def test_a_commit_sends_the_positions_and_opens_the_next_transaction() -> None:
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 4)
    assert checkpointer.checkpoint(force=True)
    assert producer.calls == ["init", "begin", "send_offsets", "commit", "begin"]
    assert checkpointer.durable_positions() == {TP: 5}
    assert checkpointer.checkpoint(force=True), "nothing new: nothing to commit"
    assert producer.calls[-1] == "begin"


def test_a_commit_that_times_out_is_retried_and_nothing_is_produced_meanwhile() -> None:
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    producer.fail["commit"] = [timed_out()]
    assert checkpointer.checkpoint(force=True), "no work lost"
    assert not checkpointer.producing
    assert checkpointer.checkpoint()
    assert producer.calls.count("send_offsets") == 1, "only the commit is retried"
    assert checkpointer.producing and checkpointer.durable_positions() == {TP: 1}


def test_an_abortable_error_aborts_and_asks_for_a_rewind() -> None:
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    producer.fail["commit"] = [must_abort()]
    assert not checkpointer.checkpoint(force=True)
    assert producer.calls[-2:] == ["abort", "begin"]
    assert checkpointer.producing and checkpointer.durable_positions() == {}


def test_an_abort_that_times_out_is_retried_on_the_next_checkpoint() -> None:
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    producer.fail["commit"] = [must_abort()]
    producer.fail["abort"] = [timed_out()]
    assert not checkpointer.checkpoint(force=True)
    assert not checkpointer.producing
    assert checkpointer.checkpoint(), "the rewind was already asked for"
    assert producer.calls[-2:] == ["abort", "begin"] and checkpointer.producing


def test_a_fenced_producer_is_replaced_by_a_new_one_with_the_same_id() -> None:
    first, second = StubProducer(), StubProducer()
    checkpointer, tracker = committer([first, second])
    produce(tracker, 0)
    first.fail["commit"] = [fenced()]
    assert not checkpointer.checkpoint(force=True)
    assert first.purged and checkpointer.producer is second
    assert second.calls == ["init", "begin"] and checkpointer.producing


def test_a_replacement_that_cannot_reach_the_coordinator_yet_retries_its_start() -> None:
    first, second = StubProducer(), StubProducer()
    checkpointer, tracker = committer([first, second])
    produce(tracker, 0)
    first.fail["abort"] = [fenced()]
    second.fail["init"] = [timed_out()]
    assert not checkpointer.abandon()
    assert not checkpointer.producing
    assert checkpointer.checkpoint()
    assert second.calls == ["init", "init", "begin"] and checkpointer.producing


def test_losing_partitions_mid_commit_completes_the_commit() -> None:
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    producer.fail["commit"] = [timed_out()]
    checkpointer.checkpoint(force=True)
    assert checkpointer.lost(), "its offsets were accepted for the generation that owned them"
    assert "abort" not in producer.calls


def test_a_partition_lost_keeps_nothing_of_what_was_committed_of_it() -> None:
    """Its next assignment starts where the group committed, perhaps past this worker's
    commits (another owner went on meanwhile): a rewind restarts there, not before."""
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    assert checkpointer.checkpoint(force=True)
    assert checkpointer.durable_positions() == {TP: 1}
    assert not checkpointer.lost()
    checkpointer.forget([TP])
    assert checkpointer.durable_positions() == {}


def test_a_commit_heard_after_its_partition_was_lost_and_assigned_again_is_not_the_new_ones() -> (
    None
):
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    producer.fail["commit"] = [timed_out(), timed_out()]
    assert checkpointer.checkpoint(force=True)
    assert checkpointer.lost()
    checkpointer.forget([TP])
    assert checkpointer.checkpoint(), "the commit is retried"
    tracker.revoke(TP)
    tracker.assign(TP, 7)  # where the group stands now, past this commit
    assert checkpointer.checkpoint()
    assert producer.calls.count("commit") == 3 and checkpointer.producing
    assert checkpointer.durable_positions() == {}, "the new assignment starts at 7"


def test_losing_partitions_aborts_an_open_transaction() -> None:
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    assert not checkpointer.lost()
    assert producer.calls[-2:] == ["abort", "begin"]


def test_an_unexpected_error_is_translated_keeping_its_code() -> None:
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    producer.fail["send_offsets"] = [KafkaException(KafkaError(KafkaError._INVALID_ARG, "bad"))]
    with pytest.raises(ZscKafkaError) as raised:
        checkpointer.checkpoint(force=True)
    assert raised.value.code == KafkaError._INVALID_ARG


def test_offsets_wait_until_the_transactions_records_are_delivered() -> None:
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    producer.undelivered = 3
    assert checkpointer.checkpoint(force=True)
    assert "send_offsets" not in producer.calls and checkpointer.producing
    producer.undelivered = 0
    assert checkpointer.checkpoint(force=True)
    assert producer.calls[-3:] == ["send_offsets", "commit", "begin"]


def test_a_revocation_aborts_a_transaction_that_cannot_commit_in_time() -> None:
    # Its offsets were not sent, so the revoked partitions' next owner starts
    # before its outputs: committed later, they would show twice.
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    producer.undelivered = 3
    assert not checkpointer.revoked([TopicPartition(*TP)]), "its work is redone"
    assert "send_offsets" not in producer.calls and "commit" not in producer.calls
    assert producer.calls[-2:] == ["abort", "begin"]


def test_a_revocation_with_nothing_to_commit_keeps_the_transaction() -> None:
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    assert checkpointer.revoked([TopicPartition(*TP)])
    assert producer.calls[-3:] == ["send_offsets", "commit", "begin"]
    assert checkpointer.revoked([TopicPartition(*TP)]), "an empty transaction stays open"
    assert "abort" not in producer.calls


def test_a_record_that_failed_aborts_the_transaction_before_its_offsets_are_sent() -> None:
    producer = StubProducer()
    checkpointer, tracker = committer([producer])
    produce(tracker, 0)
    checkpointer.record_failed()
    assert not checkpointer.checkpoint(force=True)
    assert "send_offsets" not in producer.calls
    assert producer.calls[-2:] == ["abort", "begin"]
    produce(tracker, 1)
    assert checkpointer.checkpoint(force=True), "the next transaction starts clean"


def test_a_send_offsets_call_stuck_past_its_deadline_replaces_the_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transactions, "SEND_OFFSETS_DEADLINE_S", 0.05)
    first, second = StubProducer(), StubProducer()
    checkpointer, tracker = committer([first, second])
    produce(tracker, 0)
    first.hang.clear()
    try:
        assert not checkpointer.checkpoint(force=True), "its work is redone"
        assert checkpointer.producer is second and first.purged
        assert second.calls == ["init", "begin"]
    finally:
        first.hang.set()


def test_offsets_being_sent_do_not_block_the_loop_and_a_stuck_call_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    first, second = StubProducer(), StubProducer()
    checkpointer, tracker = committer([first, second], clock)
    produce(tracker, 0)
    first.hang.clear()
    try:
        clock.now = 1.0
        assert checkpointer.checkpoint(), "the loop goes on while the offsets are sent"
        assert not checkpointer.producing, "nothing is produced into the transaction meanwhile"
        clock.now += transactions.SEND_OFFSETS_DEADLINE_S
        assert not checkpointer.checkpoint()
        assert checkpointer.producer is second and checkpointer.producing
    finally:
        first.hang.set()


def test_a_producer_failing_in_the_flush_before_the_offsets_is_replaced() -> None:
    first, second = StubProducer(), StubProducer()
    # As confluent-kafka 2.16 may raise it: a SystemError chained to the fatal error.
    chained = SystemError("returned a result with an exception set")
    chained.__cause__ = fenced()
    first.flush_fails = [chained]
    checkpointer, tracker = committer([first, second])
    produce(tracker, 4)
    assert not checkpointer.checkpoint(force=True), "its transaction's work is lost"
    assert "send_offsets" not in first.calls
    assert first.purged
    assert second.calls == ["init", "begin"]
    assert checkpointer.producing


def test_a_failure_a_delivery_report_tells_stops_production_until_the_replacement() -> None:
    first, second = StubProducer(), StubProducer()
    checkpointer, tracker = committer([first, second])
    produce(tracker, 4)
    checkpointer.producer_failed(fenced().args[0])
    assert not checkpointer.producing
    assert not checkpointer.checkpoint(), "its transaction's work is lost"
    assert "send_offsets" not in first.calls
    assert checkpointer.producer is second
    assert checkpointer.producing
