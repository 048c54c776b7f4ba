"""Which refused records are retried alone and which are dead-lettered."""

from __future__ import annotations

from worker.rejections import RecordId, RefusedRecords

OUT = RecordId("in", 0, 7, "out")


def test_a_refusal_in_company_makes_a_suspect_and_one_alone_condemns() -> None:
    refused = RefusedRecords()
    refused.refused(OUT, alone=False, reason="Message size too large")
    assert refused.suspected(OUT) and refused.condemnation(OUT) is None

    refused.refused(OUT, alone=True, reason="Message size too large")
    assert not refused.suspected(OUT)
    assert refused.condemnation(OUT) == "Message size too large"
    assert refused.condemnation(OUT) is not None, "kept until the offset is durable"


def test_a_suspect_delivered_alone_is_cleared() -> None:
    refused = RefusedRecords()
    refused.refused(OUT, alone=False, reason="too large")
    refused.delivered(OUT)
    assert not refused.suspected(OUT) and len(refused) == 0


def test_records_are_told_apart_by_destination_and_value() -> None:
    refused = RefusedRecords()
    refused.refused(OUT, alone=True, reason="too large")
    dead_letter = RecordId("in", 0, 7, "in.dlq")
    assert refused.condemnation(dead_letter) is None
    refused.refused(dead_letter, alone=True, reason="too large")
    assert refused.condemnation(dead_letter._replace(without_value=True)) is None


def test_prune_forgets_inputs_below_the_durable_position_only() -> None:
    refused = RefusedRecords()
    later = RecordId("in", 0, 9, "out")
    other = RecordId("in", 1, 3, "out")
    for record in (OUT, later, other):
        refused.refused(record, alone=True, reason="too large")
    refused.prune({("in", 0): 8})
    assert refused.condemnation(OUT) is None
    assert refused.condemnation(later) is not None
    assert refused.condemnation(other) is not None, "no durable position known for it"


def test_forget_drops_revoked_partitions() -> None:
    refused = RefusedRecords()
    refused.refused(OUT, alone=False, reason="too large")
    refused.refused(RecordId("in", 1, 3, "out"), alone=True, reason="too large")
    refused.forget({("in", 0)})
    assert not refused.suspected(OUT)
    assert len(refused) == 1
