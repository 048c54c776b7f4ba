"""The worker's settings: one frozen model, read from a YAML file, `ZSC_*` variables and flags.

Precedence, highest first: command-line flag > environment > YAML file > default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from config.errors import ConfigError
from config.kafka import KafkaSettings, check_guarantee_kept
from config.model import ConfigModel
from config.model_settings import DEFAULT_MODEL as DEFAULT_MODEL
from config.model_settings import ModelSettings
from config.registry import SchemaRegistrySettings
from config.topics import TopicSettings, topic_loops, written_topics

# Each environment variable and the settings key it sets.
ENV_KEYS: dict[str, tuple[str, ...]] = {
    "ZSC_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "ZSC_GROUP_ID": ("kafka", "group_id"),
    "ZSC_MODEL": ("model", "name"),
    "ZSC_DEVICE": ("model", "device"),
    "ZSC_DTYPE": ("model", "dtype"),
    "ZSC_MAX_BATCH_EVENTS": ("batching", "max_events"),
    "ZSC_MAX_BATCH_TOKENS": ("batching", "max_tokens"),
    "ZSC_MAX_WAIT_MS": ("batching", "max_wait_ms"),
    "ZSC_PROCESSING_GUARANTEE": ("processing_guarantee",),
    "ZSC_METRICS_PORT": ("metrics_port",),
    "ZSC_LOG_LEVEL": ("log_level",),
    "ZSC_LOG_FORMAT": ("log_format",),
    "ZSC_SHUTDOWN_TIMEOUT_S": ("shutdown_timeout_s",),
    "ZSC_CONTROL_TOPIC": ("control_topic",),
    "ZSC_SCHEMA_REGISTRY_URL": ("schema_registry", "url"),
    "ZSC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": ("schema_registry", "basic_auth_user_info"),
}

# librdkafka properties from the environment: `ZSC_KAFKA_SASL_PASSWORD` sets
# `sasl.password` for both clients, `ZSC_KAFKA_CONSUMER_<NAME>` and
# `ZSC_KAFKA_PRODUCER_<NAME>` for one of them. No settable librdkafka property
# has an underscore in its name, so "_" stands for "." unambiguously.
KAFKA_ENV_PREFIXES: dict[str, str] = {
    "ZSC_KAFKA_CONSUMER_": "consumer",
    "ZSC_KAFKA_PRODUCER_": "producer",
    "ZSC_KAFKA_": "properties",
}


# A GPU's bounds where the config sets none: the CPU's 64 events and 8192 tokens
# would leave it mostly idle (README "Scaling"). distilbart-mnli-12-3's shape in
# bfloat16 on an H200: 111k tokens/s at 8192, 298k at 32768, 344k at 65536
# (2.0 GiB peak), 358k at 131072 (3.6 GiB); past 65536 memory grows faster than
# throughput.
GPU_BATCHING = {"max_events": 512, "max_tokens": 65536}


class BatchingSettings(ConfigModel):
    """When a micro-batch closes: whichever bound is reached first."""

    max_events: int = Field(
        64,
        ge=1,
        description="Events per batch: larger amortises the model call, adds latency. "
        f"Unset on a GPU: {GPU_BATCHING['max_events']}.",
    )
    max_tokens: int = Field(
        8192,
        ge=16,
        description="Padded premise+hypothesis tokens per batch and per forward pass of the "
        "model: bounds accelerator memory; larger runs the model at fuller speed. "
        f"Unset on a GPU: {GPU_BATCHING['max_tokens']}.",
    )
    max_wait_ms: int = Field(
        50, ge=0, description="Longest wait for a batch to fill: the latency cost at low traffic."
    )


class ResultCacheSettings(ConfigModel):
    """Scores of recently seen texts, reused instead of running the model again."""

    max_entries: int = Field(
        0, ge=0, description="Entries kept (least recently used go first); 0 turns it off."
    )
    ttl_s: float = Field(300.0, gt=0, description="How long an entry stays valid.")


class Settings(ConfigModel):
    """Everything a worker needs; see `load_settings` for where values come from."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    processing_guarantee: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once",
        description="exactly-once: outputs and offsets in one Kafka transaction.",
    )
    metrics_port: int = Field(9108, ge=0, le=65535, description="0 turns the HTTP server off.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Event texts are never logged at INFO."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line, for log collectors."
    )
    result_cache: ResultCacheSettings = Field(default_factory=ResultCacheSettings)
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the in-flight batch and deliveries at shutdown."
    )
    control_topic: str = Field(
        "",
        description="Compacted topic of live topic entries (`zsc-worker topics`); empty: off.",
    )
    schema_registry: SchemaRegistrySettings = Field(default_factory=SchemaRegistrySettings)
    topics: list[TopicSettings] = Field(min_length=1)

    def for_device(self, device_type: str) -> Settings:
        """These settings, with a GPU's batching bounds where the config set none on a GPU."""
        unset = {k: v for k, v in GPU_BATCHING.items() if k not in self.batching.model_fields_set}
        if device_type != "cuda" or not unset:
            return self
        return self.model_copy(update={"batching": self.batching.model_copy(update=unset)})

    @model_validator(mode="after")
    def _distinct_inputs(self) -> Settings:
        inputs = [topic.input for topic in self.topics]
        if len(set(inputs)) != len(inputs):
            raise ValueError("each input topic may appear once")
        if loops := topic_loops(self.topics):
            raise ValueError("; ".join(loops))
        if self.control_topic and (
            self.control_topic in inputs or self.control_topic in written_topics(self.topics)
        ):
            raise ValueError(
                f"control_topic {self.control_topic!r} is also an input or output topic"
            )
        return self

    def model_of(self, topic: TopicSettings) -> ModelSettings:
        """The model that scores a topic's events: its own `model`, else the top-level one."""
        return self.model if topic.model is None else topic.model.over(self.model)

    @model_validator(mode="after")
    def _one_way_per_model(self) -> Settings:
        # Outputs and metrics name a model by its name alone, so a name loads once.
        first: dict[str, tuple[int, ModelSettings]] = {}
        for index, topic in enumerate(self.topics):
            model = self.model_of(topic)
            seen, earlier = first.setdefault(model.name, (index, model))
            if earlier != model:
                raise ValueError(
                    f"topics.{index}.model: model {model.name!r} runs with device"
                    f" {earlier.device}, dtype {earlier.dtype} for topics.{seen}; a worker runs"
                    " a model one way only (give both topics the same device and dtype)"
                )
        return self

    @model_validator(mode="after")
    def _registry_given(self) -> Settings:
        if self.schema_registry.configured:
            return self
        for index, topic in enumerate(self.topics):
            if topic.format != "json":
                raise ValueError(
                    f"topics.{index}.format: {topic.format} needs schema_registry.url"
                    " (ZSC_SCHEMA_REGISTRY_URL): its schemas are read from the registry"
                )
        return self

    @model_validator(mode="after")
    def _guarantee_kept(self) -> Settings:
        check_guarantee_kept(self.kafka, self.processing_guarantee)
        return self


# A layer of settings: nested mappings, as in the YAML file.
Layer = dict[str, Any]


def load_settings(
    config_file: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the YAML file, lay the `ZSC_*` variables and then `overrides` over it, validate.

    `overrides` maps dotted keys (``"kafka.group_id"``) to values; None values are skipped.
    Raises ConfigError naming each bad key and why.
    """
    merged = _merged_layers(config_file, overrides, environ)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, config_file)) from None


class _KafkaOnly(BaseModel):
    """The `kafka` key of a configuration, its other keys left unread."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)


def load_kafka_settings(
    config_file: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> KafkaSettings:
    """The `kafka` settings alone, from the same layers as `load_settings`, for a command that
    talks to the brokers but runs no worker (`replay`): the file's other keys are not read, so
    no `topics` are needed. Raises ConfigError naming each bad key and why."""
    merged = _merged_layers(config_file, overrides, environ)
    try:
        return _KafkaOnly(**merged).kafka
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, config_file)) from None


def _merged_layers(
    config_file: str | Path | None,
    overrides: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None,
) -> Layer:
    """The file, the environment and the flags laid over each other, not yet validated."""
    flags = [(tuple(key.split(".")), v) for key, v in (overrides or {}).items() if v is not None]
    layers = [
        _read_yaml(config_file) if config_file else {},
        _env_layer(os.environ if environ is None else environ),
        _nest(flags),
    ]
    merged: Layer = {}
    for layer in layers:
        _deep_merge(merged, layer)
    return merged


def describe_validation_error(exc: ValidationError, source: str | Path | None) -> str:
    """One line per problem: the dotted key and pydantic's reason."""
    where = f" in {source}" if source else ""
    return "\n".join([f"invalid configuration{where}:", *(f"  {p}" for p in problems(exc))])


def problems(exc: ValidationError) -> list[str]:
    """Each problem pydantic found, as "dotted.key: reason"."""
    return [
        f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
        for error in exc.errors()
    ]


def _read_yaml(path: str | Path) -> Layer:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys")
    return data


def _env_layer(environ: Mapping[str, str]) -> Layer:
    """The settings the `ZSC_*` variables give: `ENV_KEYS`, then librdkafka properties."""
    keys = [(path, environ[name]) for name, path in ENV_KEYS.items() if name in environ]
    for name, value in environ.items():
        # The most specific prefix first: ZSC_KAFKA_CONSUMER_ before ZSC_KAFKA_.
        for prefix, section in KAFKA_ENV_PREFIXES.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                property_name = name[len(prefix) :].lower().replace("_", ".")
                keys.append((("kafka", section, property_name), value))
                break
    return _nest(keys)


def _nest(keys: Iterable[tuple[tuple[str, ...], Any]]) -> Layer:
    """Values by key path as nested mappings: (("kafka", "group_id"), g) -> {"kafka": {...}}."""
    nested: Layer = {}
    for (*parents, leaf), value in keys:
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _deep_merge(base: Layer, top: Mapping[str, Any]) -> None:
    """Lay `top` over `base` in place: mappings merge key by key, anything else replaces."""
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
