"""The schema registry: its client, what its errors mean, and whether it answers.

An error that says the registry does not know a schema is the record's
problem (it is dead-lettered); one that says the registry refused an output
schema is the event's (dead-lettered too). Everything else (no connection, a
timeout, a 5xx, a login refused) is an outage: the record waits, the worker
reports not ready, and asks again with backoff (`RegistryStatus`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NoReturn, TypeVar

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError

from config.registry import SchemaRegistrySettings
from worker import errors
from worker.metrics import Health

log = logging.getLogger(__name__)

# Confluent's error codes (Apicurio's compatibility API answers the same ones).
SCHEMA_NOT_FOUND = 40403
INCOMPATIBLE_SCHEMA = 409
INVALID_SCHEMA = 42201

# While the registry is away: the first wait before asking again, doubled up to the
# longest, so that a registry back after a restart is noticed within seconds but a
# long outage costs one lookup every few seconds.
FIRST_RETRY_S = 0.25
MAX_RETRY_S = 5.0
# One warning a minute while it lasts: enough to see it in the log, not a flood.
LOG_INTERVAL_S = 60.0

T = TypeVar("T")

REGISTRY_ERRORS = (SchemaRegistryError, httpx.TransportError)
"""What a registry request raises: an answer that is an error, or no answer (the client's
HTTP library is whichever confluent-kafka picked, httpx2 or httpx)."""

ErrorTest = Callable[[BaseException], bool]
"""Which registry errors a caller handles itself (see `RegistryStatus.call`)."""

RegistryClientFactory = Callable[[SchemaRegistrySettings], SchemaRegistryClient]
"""Makes the registry client (`make_registry_client`); a seam for a mock registry."""


def make_registry_client(settings: SchemaRegistrySettings) -> SchemaRegistryClient:
    """confluent-kafka's client, configured from the settings; ConfigError naming the key."""
    try:
        return SchemaRegistryClient(settings.client_config())
    except (ValueError, TypeError) as exc:
        # The client's messages name its own properties, never their values.
        raise errors.ConfigError(f"schema_registry: {exc}") from None


def unknown_schema(exc: BaseException) -> bool:
    """Whether a registry error says the schema id is not known there."""
    return isinstance(exc, SchemaRegistryError) and exc.error_code == SCHEMA_NOT_FOUND


def schema_refused(exc: BaseException) -> bool:
    """Whether a registry error says it refused a schema (incompatible, or invalid)."""
    return isinstance(exc, SchemaRegistryError) and (
        exc.http_status_code == INCOMPATIBLE_SCHEMA
        or exc.error_code in (INCOMPATIBLE_SCHEMA, INVALID_SCHEMA)
    )


def describe(exc: BaseException) -> str:
    """A registry error for a log line or a dead-letter header."""
    if isinstance(exc, SchemaRegistryError):
        return f"{exc.error_message} (HTTP {exc.http_status_code}, code {exc.error_code})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RegistryStatus:
    """Whether the registry answers: readiness, a warning a minute while it does not, and
    when to ask it again."""

    def __init__(self, health: Health, clock: Callable[[], float]) -> None:
        self._health = health
        self._clock = clock
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._backoff = FIRST_RETRY_S
        self._next_log_at = 0.0

    @property
    def down(self) -> bool:
        """Whether the last call to the registry failed for want of it."""
        return self._down_since is not None

    def retry_due(self) -> bool:
        """Whether to ask the registry again now."""
        return self._clock() >= self._retry_at

    def call(self, what: str, request: Callable[[], T], theirs: ErrorTest) -> T:
        """Make a registry request; RegistryUnavailable when the registry is away.

        Between the retries of an outage it fails at once, asking nothing: a
        registry that timed out would hold up the loop for each partition that
        needs it. A SchemaRegistryError that `theirs` accepts
        (`unknown_schema`, `schema_refused`) is the caller's to handle: it is
        raised as it is.
        """
        if self.down and not self.retry_due():
            raise errors.RegistryUnavailable("waiting to ask again")
        try:
            result = request()
        except REGISTRY_ERRORS as exc:
            self.failed(what, exc, theirs)
        self._answered()
        return result

    def failed(self, what: str, exc: BaseException, theirs: ErrorTest) -> NoReturn:
        """A registry request failed: raise it for the caller if `theirs`, else
        RegistryUnavailable."""
        if theirs(exc):
            self._answered()
            raise exc
        self._unreachable(f"{what}: {describe(exc)}")
        raise errors.RegistryUnavailable(describe(exc)) from None

    def _unreachable(self, reason: str) -> None:
        now = self._clock()
        if self._down_since is None:
            self._down_since = now
            self._backoff = FIRST_RETRY_S
            self._health.registry_down()
        else:
            self._backoff = min(MAX_RETRY_S, self._backoff * 2)
        self._retry_at = now + self._backoff
        if now >= self._next_log_at:
            self._next_log_at = now + LOG_INTERVAL_S
            log.warning(
                "schema registry unreachable for %.0f s, records wait (not ready): %s",
                now - self._down_since,
                reason,
            )

    def _answered(self) -> None:
        if self._down_since is None:
            return
        log.info(
            "schema registry answers again after %.0f s: ready", self._clock() - self._down_since
        )
        self._down_since = None
        self._next_log_at = 0.0
        self._health.registry_up()
