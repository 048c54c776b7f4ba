"""Topic administration: what the demo and the tools need to set up a broker."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from worker.kafka.clients import translate

# How long topic creation may take on a freshly started single-node broker.
CREATE_TIMEOUT_S = 30.0


def ensure_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    partitions: int = 1,
    replication: int = 1,
    config: Mapping[str, str] | None = None,
) -> None:
    """Create the topics that do not exist yet, with the topic `config` given
    (`{"cleanup.policy": "compact"}`); existing ones are left as they are."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    try:
        existing = set(admin.list_topics(timeout=CREATE_TIMEOUT_S).topics)
    except KafkaException as exc:
        raise translate(exc, f"cannot reach the brokers at {bootstrap_servers}") from None
    wanted = [
        NewTopic(name, partitions, replication, config=dict(config or {}))
        for name in names
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=CREATE_TIMEOUT_S).items():
        try:
            future.result(timeout=CREATE_TIMEOUT_S)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise translate(exc, f"cannot create topic {name!r}") from None
