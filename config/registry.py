"""The schema registry that Avro and JSON Schema topics are read and written with."""

from __future__ import annotations

from pydantic import ConfigDict, Field, SecretStr, field_validator

from config.kafka import is_secret_property
from config.model import ConfigModel

# A lookup blocks the polling thread (only a schema id not seen before goes to the
# network): long enough for a registry across a data centre, short enough that
# a hung one stalls nothing for long. The worker retries on its own, with
# backoff, and keeps polling meanwhile: the client's own retries would sleep on
# the polling thread for up to 20 s.
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_RETRIES = 0
# Client properties holding a login whose names do not say so (see config.kafka for the rest).
SECRET_PROPERTIES = frozenset({"basic.auth.user.info", "bearer.auth.token"})


class SchemaRegistrySettings(ConfigModel):
    """Where the registry is and how to log in; other keys go to confluent-kafka's
    `SchemaRegistryClient` as they are (`ssl.ca.location`, `timeout`, `max.retries`...)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    url: str = Field(
        "",
        description="The registry's Confluent-compatible API (Apicurio: .../apis/ccompat/v7);"
        " needed by topics whose format is not json.",
    )
    basic_auth_user_info: SecretStr | None = Field(
        None, description="`user:password` for HTTP basic authentication; never logged."
    )

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if url and not all(
            part.strip().startswith(("http://", "https://")) for part in url.split(",")
        ):
            raise ValueError("must be http(s)://host[:port][/path], comma-separated for several")
        return url

    @property
    def configured(self) -> bool:
        """Whether a registry is configured at all."""
        return bool(self.url)

    def client_config(self) -> dict[str, object]:
        """The configuration of confluent-kafka's `SchemaRegistryClient`, secrets revealed."""
        config: dict[str, object] = {
            "url": self.url,
            "timeout": DEFAULT_TIMEOUT_S,
            "max.retries": DEFAULT_MAX_RETRIES,
        }
        for name, value in (self.model_extra or {}).items():
            config[name] = value.get_secret_value() if isinstance(value, SecretStr) else value
        if self.basic_auth_user_info is not None:
            config["basic.auth.user.info"] = self.basic_auth_user_info.get_secret_value()
        return config

    def model_post_init(self, context: object, /) -> None:
        """Hold the values of secret client properties (`ssl.key.password`...) as secrets."""
        for name, value in list((self.model_extra or {}).items()):
            secret = name in SECRET_PROPERTIES or is_secret_property(name)
            if secret and not isinstance(value, SecretStr):
                self.model_extra[name] = SecretStr(str(value))  # type: ignore[index]
