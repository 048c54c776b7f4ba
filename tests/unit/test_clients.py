"""Client settings: security properties reach both clients, secrets only there."""

from __future__ import annotations

from pathlib import Path

from config.settings import load_settings
from worker.kafka.clients import consumer_config, producer_config

CONFIG = """
kafka:
  properties: {security.protocol: SASL_SSL, sasl.mechanism: PLAIN, sasl.password: s3cret}
  consumer: {session.timeout.ms: 6000}
  producer: {linger.ms: 20}
topics: [{input: a, output: b, labels: [x]}]
"""


def test_properties_reach_both_clients_and_secrets_stay_hidden(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    settings = load_settings(path, environ={"ZSC_KAFKA_SASL_USERNAME": "user"})
    consumer, producer = consumer_config(settings), producer_config(settings)
    for config in (consumer, producer):
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.password"] == "s3cret"
        assert config["sasl.username"] == "user"
    assert consumer["session.timeout.ms"] == 6000 and producer["linger.ms"] == 20
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())
