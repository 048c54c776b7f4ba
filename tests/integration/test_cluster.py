"""The three-node test cluster itself: what the failover fault tests take for granted."""

from __future__ import annotations

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import ConfigResource, ResourceType

from tests.brokers.cluster import MIN_INSYNC_REPLICAS, NODES, KafkaCluster
from tests.integration.conftest import NameFactory, TopicFactory
from tests.integration.faults.support import wait_until
from tests.integration.harness import read

PARTITIONS = 3
RECORDS_PER_PHASE = 50
ADMIN_TIMEOUT_S = 30.0
# The controller fences a killed node once its session (broker.session.timeout.ms,
# 9 s) expires; counted from a new controller's election when the node was the
# controller too. Its partitions get new leaders then.
LEADERS_MOVE_WITHIN_S = 30.0
ACKNOWLEDGED_WITHIN_S = 60.0


def produce_all(bootstrap_servers: str, topic: str, first: int) -> None:
    """Produce `RECORDS_PER_PHASE` records with acks=all; every one must be acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True})
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)

    for number in range(first, first + RECORDS_PER_PHASE):
        producer.produce(topic, str(number).encode(), on_delivery=delivered)
    assert producer.flush(ACKNOWLEDGED_WITHIN_S) == 0, "records were not all acknowledged"
    assert not failures, failures[:3]


def test_a_node_killed_and_restarted_leaves_the_topic_writable(
    kafka_cluster: KafkaCluster, create_topics: TopicFactory, unique_name: NameFactory
) -> None:
    cluster = kafka_cluster
    admin = cluster.admin
    assert set(admin.list_topics(timeout=ADMIN_TIMEOUT_S).brokers) == set(range(1, NODES + 1))
    [topic] = create_topics([unique_name()], PARTITIONS, admin=admin)
    metadata = admin.list_topics(topic, timeout=ADMIN_TIMEOUT_S).topics[topic]
    assert all(len(p.replicas) == NODES for p in metadata.partitions.values())
    [config] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    assert config.result(ADMIN_TIMEOUT_S)["min.insync.replicas"].value == str(MIN_INSYNC_REPLICAS)
    produce_all(cluster.bootstrap_servers, topic, 0)

    victim = cluster.busiest_node([topic])
    cluster.kill(victim)
    assert not cluster.nodes[victim].running

    def moved() -> bool:
        leaders = set(cluster.leaders([topic]).values())
        return victim not in leaders and None not in leaders

    wait_until(moved, LEADERS_MOVE_WITHIN_S, f"new leaders for node {victim}'s partitions")
    # Two of three replicas in sync: acks=all writes still succeed.
    produce_all(cluster.bootstrap_servers, topic, RECORDS_PER_PHASE)

    cluster.restart(victim)
    cluster.wait_until_replicated()
    assert not cluster.under_replicated()
    produce_all(cluster.bootstrap_servers, topic, 2 * RECORDS_PER_PHASE)
    records = read(cluster.bootstrap_servers, [topic], 3 * RECORDS_PER_PHASE)
    assert sorted(int(r.value or b"") for r in records) == list(range(3 * RECORDS_PER_PHASE))
