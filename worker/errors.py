"""The exception tree of zsc-worker: one root, one subclass per place things go wrong."""

from __future__ import annotations

from config import errors as config_errors


class ZscError(Exception):
    """Root of every error raised by zsc-worker."""


class ConfigError(ZscError, config_errors.ConfigError):
    """The configuration is invalid; the message names the key and the reason.

    A worker error and the config package's error at once: `except
    config.errors.ConfigError` catches those raised by loading the settings and these.
    """


class ModelError(ZscError):
    """The NLI model cannot be loaded or is unfit for zero-shot classification."""


class InferenceError(ZscError):
    """Scoring a batch failed on the model."""


class TooManyChunksError(ZscError):
    """A text needs more chunks than its topic's `long_text.max_chunks` allows."""


class ControlRecordError(ZscError):
    """A control-topic record that cannot change a topic's entry; the message says why."""


class RegistryUnavailable(ZscError):
    """The schema registry cannot be reached (or fails on its side): an outage, not bad input."""


class OutputSchemaError(ZscError):
    """An input schema the output schema cannot be derived from; the message says why."""


class BrokerError(ZscError):
    """An embedded or test broker could not be provisioned or started."""


class KafkaError(ZscError):
    """A Kafka operation failed; `code` keeps librdkafka's error code."""

    def __init__(self, message: str, code: int | None = None, retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable


class ProduceError(KafkaError):
    """A record could not be handed to the producer."""
