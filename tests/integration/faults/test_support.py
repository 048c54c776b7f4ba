"""The fault tests' own reader: what it must survive for their counts to mean anything."""

from __future__ import annotations

import threading
import time

from confluent_kafka.admin import AdminClient

from tests.integration.conftest import NameFactory, TopicFactory
from tests.integration.faults.support import Tally, produce_events

PARTITIONS = 2
EVENTS = 10
# Long enough that the reader asks for the topic's metadata before it exists.
CREATED_AFTER_S = 1.0
READ_TIMEOUT_S = 30.0


def test_a_tally_built_before_its_topic_shows_in_the_metadata_still_reads_it(
    bootstrap_servers: str,
    admin: AdminClient,
    create_topics: TopicFactory,
    unique_name: NameFactory,
) -> None:
    """A topic just created can be missing from the metadata of the broker a reader asks
    (a three-node cluster propagates it broker by broker): the reader must wait for its
    partitions, not assign none and read nothing for the rest of the test."""
    topic = unique_name("late")

    def create_later() -> None:
        time.sleep(CREATED_AFTER_S)
        create_topics([topic], PARTITIONS, admin=admin)

    creator = threading.Thread(target=create_later, name="create-later")
    creator.start()
    try:
        tally = Tally(bootstrap_servers, [topic])
    finally:
        creator.join()
    with tally:
        produce_events(bootstrap_servers, topic, [b"{}"] * EVENTS)
        tally.wait_for(range(EVENTS), READ_TIMEOUT_S, settle_s=0.0)
        assert not tally.missing(range(EVENTS))
