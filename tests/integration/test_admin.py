"""`ensure_topics` against a real broker: the topic config it is given, and none otherwise."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, ConfigResource

from tests.integration.conftest import NameFactory
from worker.demo import COMPACTED
from worker.kafka.admin import ensure_topics

DESCRIBE_TIMEOUT_S = 30.0


def cleanup_policy(admin: AdminClient, topic: str) -> str | None:
    """The topic's cleanup.policy; None where the broker lists only the configs a topic was
    created with (Tansu)."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    [future] = admin.describe_configs([resource]).values()
    entry = future.result(DESCRIBE_TIMEOUT_S).get("cleanup.policy")
    return None if entry is None else str(entry.value)


def test_ensure_topics_creates_a_control_topic_compacted(
    bootstrap_servers: str, admin: AdminClient, unique_name: NameFactory
) -> None:
    control, plain = unique_name("control"), unique_name("plain")
    ensure_topics(bootstrap_servers, [control], config=COMPACTED)
    ensure_topics(bootstrap_servers, [plain])
    assert cleanup_policy(admin, control) == "compact"
    assert cleanup_policy(admin, plain) in ("delete", None)
