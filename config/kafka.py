"""Kafka connection settings and the librdkafka rules the worker enforces on them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from config.model import ConfigModel

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

LibrdkafkaValue = str | int | float | bool
# A librdkafka property as held in the settings: secrets wrapped so that no repr,
# log line or error message shows them (see `is_secret_property`).
PropertyValue = LibrdkafkaValue | SecretStr
# The client a section of properties is for: `kafka.consumer` or `kafka.producer`.
Client = Literal["consumer", "producer"]

# Words that mark a librdkafka property as a secret: sasl.password,
# ssl.key.password, ssl.keystore.password, sasl.oauthbearer.client.secret,
# the passphrase of an assertion key...
SECRET_WORDS = ("password", "secret", "passphrase")
# Secrets whose names do not say so: PEM private keys, and the OAUTHBEARER
# config string, which may carry credentials.
SECRET_PROPERTIES = frozenset(
    {"ssl.key.pem", "sasl.oauthbearer.assertion.private.key.pem", "sasl.oauthbearer.config"}
)

# The consumer's session timeout unless a property sets one (the worker's
# choice, see worker/kafka/clients.py), and librdkafka's defaults of the two
# properties it must stay consistent with.
DEFAULT_SESSION_TIMEOUT_MS = 10_000
LIBRDKAFKA_HEARTBEAT_INTERVAL_MS = 3_000
LIBRDKAFKA_MAX_POLL_INTERVAL_MS = 300_000
# Properties the worker sets itself, and what turning them on (or setting them
# at all, for transactional.id) breaks.
GUARANTEE_CONSUMER_PROPERTIES = {
    "enable.auto.offset.store": "the worker stores an offset only once its output is "
    "delivered; storing it when the record is handed out loses events on a crash",
}
EXACTLY_ONCE_CONSUMER_PROPERTIES = {
    "enable.auto.commit": "offsets are committed inside the transactions; auto-commit "
    "would commit them apart from their outputs",
}
EXACTLY_ONCE_PRODUCER_PROPERTIES = {
    "transactional.id": "the worker gives each instance its own; instances sharing one "
    "fence each other off",
}


def is_secret_property(name: str) -> bool:
    """Whether a librdkafka property holds a secret that must never be shown."""
    return name in SECRET_PROPERTIES or any(word in name for word in SECRET_WORDS)


def _hide_secrets(properties: dict[str, PropertyValue]) -> dict[str, PropertyValue]:
    return {
        name: SecretStr(str(value))
        if is_secret_property(name) and not isinstance(value, SecretStr)
        else value
        for name, value in properties.items()
    }


class KafkaSettings(ConfigModel):
    """Where the brokers are, which consumer group the workers share, how to connect.

    `properties` go to both clients (security settings belong there); `consumer`
    and `producer` to one client each and win over `properties`. Values of secret
    properties (`is_secret_property`) are held as `SecretStr`.
    """

    bootstrap_servers: str = Field(
        DEFAULT_BOOTSTRAP, min_length=1, description="Brokers, host:port[,host:port...]."
    )
    group_id: str = Field(
        "zsc-worker", min_length=1, description="The consumer group the workers share."
    )
    properties: dict[str, PropertyValue] = Field(
        default_factory=dict,
        description="librdkafka properties of both clients (security.protocol, sasl.*, ssl.*).",
    )
    consumer: dict[str, PropertyValue] = Field(
        default_factory=dict, description="Extra librdkafka consumer properties, passed through."
    )
    producer: dict[str, PropertyValue] = Field(
        default_factory=dict, description="Extra librdkafka producer properties, passed through."
    )

    @field_validator("properties", "consumer", "producer")
    @classmethod
    def _secrets_hidden(cls, properties: dict[str, PropertyValue]) -> dict[str, PropertyValue]:
        return _hide_secrets(properties)

    def client_properties(self, client: Client) -> dict[str, PropertyValue]:
        """The properties the configuration gives one client: its own over `properties`."""
        return {**self.properties, **getattr(self, client)}

    @property
    def classic_group_protocol(self) -> bool:
        """Whether the consumer uses the classic group protocol, where the client sets the
        session timeout; under KIP-848's `consumer` protocol the broker does."""
        return str(self.client_properties("consumer").get("group.protocol", "classic")) == "classic"

    @model_validator(mode="after")
    def _consistent_timeouts(self) -> KafkaSettings:
        """Consumer timeouts that would fail only once the worker runs (or its model loaded)."""
        if not self.classic_group_protocol:
            return self  # the broker sets session and heartbeat timings there
        consumer = self.client_properties("consumer")
        session = _milliseconds(consumer, "session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS)
        heartbeat = _milliseconds(
            consumer, "heartbeat.interval.ms", LIBRDKAFKA_HEARTBEAT_INTERVAL_MS
        )
        max_poll = _milliseconds(consumer, "max.poll.interval.ms", LIBRDKAFKA_MAX_POLL_INTERVAL_MS)
        if heartbeat is not None and session is not None and heartbeat >= session:
            raise ValueError(
                f"consumer heartbeat.interval.ms ({heartbeat}) must be below session.timeout.ms"
                f" ({session}): the session would lapse between heartbeats, and the group"
                " evict the worker again and again"
            )
        if max_poll is not None and session is not None and max_poll < session:
            raise ValueError(
                f"consumer max.poll.interval.ms ({max_poll}) must be at least session.timeout.ms"
                f" ({session}): librdkafka refuses the consumer otherwise"
            )
        return self


def check_guarantee_kept(kafka: KafkaSettings, guarantee: str) -> None:
    """Refuse client properties that would silently break the delivery guarantee.

    Raises ValueError naming the client section, the property and what it breaks.
    """
    owned: list[tuple[Client, dict[str, str]]] = [("consumer", GUARANTEE_CONSUMER_PROPERTIES)]
    if guarantee == "exactly-once":
        owned += [
            ("consumer", EXACTLY_ONCE_CONSUMER_PROPERTIES),
            ("producer", EXACTLY_ONCE_PRODUCER_PROPERTIES),
        ]
    for client, reasons in owned:
        given = kafka.client_properties(client)
        for name, reason in reasons.items():
            if name in given and str(given[name]).lower() not in ("false", "0"):
                raise ValueError(
                    f"kafka.{client}: {name} is the worker's own under {guarantee}: {reason}"
                )


def _milliseconds(properties: Mapping[str, PropertyValue], name: str, default: int) -> int | None:
    """A duration property as an int; None when it is not one (librdkafka then says why)."""
    value = properties.get(name, default)
    if isinstance(value, bool | SecretStr):
        return None
    try:
        return int(value)
    except ValueError:
        return None
