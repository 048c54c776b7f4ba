"""The worker's settings: one frozen model, read from a YAML file, `ZSC_*` variables and flags.

Precedence, highest first: command-line flag > environment > YAML file > default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.errors import ConfigError

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_MODEL = "valhalla/distilbart-mnli-12-3"
DEFAULT_TEMPLATE = "This example is {}."
# Texts longer than this are dead-lettered: the model sees at most ~1,000 tokens
# (a few thousand characters) anyway, and a huge text only costs tokenizer time.
DEFAULT_MAX_TEXT_CHARS = 100_000

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

LibrdkafkaValue = str | int | float | bool
# A librdkafka property as held in the settings: secrets wrapped so that no repr,
# log line or error message shows them (see `is_secret_property`).
PropertyValue = LibrdkafkaValue | SecretStr

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


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
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

    @model_validator(mode="after")
    def _consistent_timeouts(self) -> KafkaSettings:
        """Consumer timeouts that would fail only once the worker runs (or its model loaded)."""
        consumer = {**self.properties, **self.consumer}
        if str(consumer.get("group.protocol", "classic")) != "classic":
            return self  # the broker sets session and heartbeat timings there
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


class ModelSettings(_Section):
    """Which NLI model scores the events, and on what hardware."""

    name: str = Field(DEFAULT_MODEL, min_length=1, description="Hub id or local directory.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = Field(
        "auto",
        description=(
            "auto: bfloat16 on CUDA (float16 without bf16), and on CPUs with AMX or "
            "AVX512-BF16 where a start-up matmul probe finds it faster; else float32. "
            "int8 (CPU only, opt-in): Linear layers quantized, faster, scores move."
        ),
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value


# A GPU's bounds where the config sets none: the CPU's 64 events and 8192 tokens
# would leave it mostly idle (README "Scaling"). distilbart-mnli-12-3's shape in
# bfloat16 on an H200: 111k tokens/s at 8192, 298k at 32768, 344k at 65536
# (2.0 GiB peak), 358k at 131072 (3.6 GiB); past 65536 memory grows faster than
# throughput.
GPU_BATCHING = {"max_events": 512, "max_tokens": 65536}


class BatchingSettings(_Section):
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


class LabelSpec(_Section):
    """A label with a hypothesis of its own instead of the topic's templates."""

    name: str = Field(min_length=1)
    hypothesis: str = Field(min_length=1)


LabelEntry = str | LabelSpec


def label_names_of(entries: list[LabelEntry]) -> list[str]:
    """The names of label entries, in order."""
    return [entry if isinstance(entry, str) else entry.name for entry in entries]


def _check_labels(entries: list[LabelEntry]) -> list[LabelEntry]:
    names = label_names_of(entries)
    if any(not name.strip() for name in names):
        raise ValueError("labels must be non-empty strings")
    if len(set(names)) != len(names):
        raise ValueError("labels must be distinct")
    return entries


class LabelGroupSettings(_Section):
    """Labels scored in their own mode beside the topic's labels (e.g. sentiment)."""

    labels: list[LabelEntry] = Field(min_length=1)
    multi_label: bool = False
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="For `predicted` when multi_label.")

    _labels_ok = field_validator("labels")(_check_labels)


class CalibrationSettings(_Section):
    """Confidence calibration: a logit temperature and per-label decision thresholds."""

    temperature: float = Field(
        1.0, gt=0, description="Divides the logits before every softmax; fitted by `calibrate`."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-label thresholds that override `threshold`."
    )

    @field_validator("thresholds")
    @classmethod
    def _probabilities(cls, thresholds: dict[str, float]) -> dict[str, float]:
        if any(not 0.0 <= value <= 1.0 for value in thresholds.values()):
            raise ValueError("thresholds must lie between 0 and 1")
        return thresholds


class RouteSettings(_Section):
    """Extra destination: when `label` scores `min_score` or more, or none is above `none_above`."""

    topic: str = Field(min_length=1)
    label: str | None = None
    min_score: float | None = Field(None, ge=0.0, le=1.0)
    none_above: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_rule(self) -> RouteSettings:
        by_label = (self.label is not None, self.min_score is not None)
        by_none_above = self.none_above is not None
        if by_label not in ((True, True), (False, False)) or all(by_label) == by_none_above:
            raise ValueError("a route has either `label` with `min_score`, or `none_above`")
        return self


class ResultCacheSettings(_Section):
    """Scores of recently seen texts, reused instead of running the model again."""

    max_entries: int = Field(
        0, ge=0, description="Entries kept (least recently used go first); 0 turns it off."
    )
    ttl_s: float = Field(300.0, gt=0, description="How long an entry stays valid.")


class TopicSettings(_Section):
    """One input topic: where its results go and what its events are classified against."""

    input: str = Field(min_length=1, description="The topic read.")
    output: str = Field(min_length=1, description="The topic the enriched events go to.")
    dead_letter: str = Field("", description='Where undecodable events go; default "<input>.dlq".')
    labels: list[LabelEntry] = Field(
        min_length=1, description="Candidate labels: a name, or {name, hypothesis}."
    )
    hypothesis_template: str | list[str] = Field(
        DEFAULT_TEMPLATE, description="`{}` becomes the label; a list is an ensemble (mean)."
    )
    multi_label: bool = Field(False, description="Score each label on its own.")
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Multi-label: labels scoring at least this are predicted."
    )
    text_field: str = Field("text", min_length=1, description="The field holding the text.")
    allow_event_labels: bool = Field(
        False, description="An event's own `labels` list wins over the topic's."
    )
    max_text_chars: int = Field(
        DEFAULT_MAX_TEXT_CHARS, ge=1, description="Longer texts are dead-lettered."
    )
    label_groups: dict[str, LabelGroupSettings] = Field(
        default_factory=dict, description="Named label sets scored in their own mode."
    )
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    include_logits: bool = Field(False, description="Add the raw NLI logits to the output.")
    routes: list[RouteSettings] = Field(
        default_factory=list, description="Extra topics the enriched event goes to."
    )

    _labels_ok = field_validator("labels")(_check_labels)

    @field_validator("hypothesis_template")
    @classmethod
    def _has_placeholder(cls, template: str | list[str]) -> str | list[str]:
        if isinstance(template, list):
            if not template:
                raise ValueError("an ensemble needs at least one template")
            for one in template:
                check_template(one)
            return template
        return check_template(template)

    @property
    def label_names(self) -> list[str]:
        """The labels' names, in order."""
        return label_names_of(self.labels)

    @property
    def all_label_names(self) -> set[str]:
        """The names of the topic's labels and of every group's."""
        names = set(self.label_names)
        for group in self.label_groups.values():
            names |= set(label_names_of(group.labels))
        return names

    @property
    def extra_outputs(self) -> list[str]:
        """The route topics."""
        return [route.topic for route in self.routes]

    @model_validator(mode="after")
    def _consistent(self) -> TopicSettings:
        if not self.dead_letter:
            object.__setattr__(self, "dead_letter", f"{self.input}.dlq")
        known = self.all_label_names
        if unknown := set(self.calibration.thresholds) - known:
            raise ValueError(f"calibration.thresholds name unknown labels {sorted(unknown)}")
        if unknown := {r.label for r in self.routes if r.label is not None} - known:
            raise ValueError(f"routes name unknown labels {sorted(unknown)}")
        return self


def topic_loops(topics: list[TopicSettings]) -> list[str]:
    """Each output, route or dead-letter topic that is also an input topic, by its key.

    The worker would consume such a topic's records again and classify them forever.
    """
    inputs = {topic.input: index for index, topic in enumerate(topics)}
    loops: list[str] = []
    for index, topic in enumerate(topics):
        written = [
            (f"topics.{index}.output", topic.output),
            *(
                (f"topics.{index}.routes.{n}.topic", name)
                for n, name in enumerate(topic.extra_outputs)
            ),
            (f"topics.{index}.dead_letter", topic.dead_letter),
        ]
        for key, name in written:
            if name in inputs:
                loops.append(
                    f"{key}: {name!r} is also an input topic (topics.{inputs[name]}.input),"
                    " so its records would be consumed again and classified forever"
                )
    return loops


def _milliseconds(properties: Mapping[str, PropertyValue], name: str, default: int) -> int | None:
    """A duration property as an int; None when it is not one (librdkafka then says why)."""
    value = properties.get(name, default)
    if isinstance(value, bool | SecretStr):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def check_template(template: str) -> str:
    """Refuse a hypothesis template that has no `{}` for the label, as the pipeline does."""
    if "{}" not in template:
        raise ValueError('must contain "{}" where the label goes')
    return template


class Settings(BaseSettings):
    """Everything a worker needs; see `load_settings` for where values come from."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

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
        return self

    @model_validator(mode="after")
    def _guarantee_kept(self) -> Settings:
        """Refuse client properties that would silently break the delivery guarantee."""
        owned = [("consumer", GUARANTEE_CONSUMER_PROPERTIES)]
        if self.processing_guarantee == "exactly-once":
            owned += [
                ("consumer", EXACTLY_ONCE_CONSUMER_PROPERTIES),
                ("producer", EXACTLY_ONCE_PRODUCER_PROPERTIES),
            ]
        for client, reasons in owned:
            given = {**self.kafka.properties, **getattr(self.kafka, client)}
            for name, reason in reasons.items():
                if name in given and str(given[name]).lower() not in ("false", "0"):
                    raise ValueError(
                        f"kafka.{client}: {name} is the worker's own under"
                        f" {self.processing_guarantee}: {reason}"
                    )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """`load_settings` merges the layers itself, so only the merged values count."""
        return (init_settings,)


def load_settings(
    config_file: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the YAML file, lay the `ZSC_*` variables and then `overrides` over it, validate.

    `overrides` maps dotted keys (``"kafka.group_id"``) to values; None values are skipped.
    Raises ConfigError naming each bad key and why.
    """
    layers = [
        _read_yaml(config_file) if config_file else {},
        _env_layer(os.environ if environ is None else environ),
        _nest({k: v for k, v in (overrides or {}).items() if v is not None}),
    ]
    merged: dict[str, Any] = {}
    for layer in layers:
        _deep_merge(merged, layer)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, config_file)) from None


def describe_validation_error(exc: ValidationError, source: str | Path | None) -> str:
    """One line per problem: the dotted key and pydantic's reason."""
    where = f" in {source}" if source else ""
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)


def _read_yaml(path: str | Path) -> dict[str, Any]:
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


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, path in ENV_KEYS.items():
        if name in environ:
            _deep_merge(layer, _nest({".".join(path): environ[name]}))
    kafka: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        # The most specific prefix first: ZSC_KAFKA_CONSUMER_ before ZSC_KAFKA_.
        for prefix, section in KAFKA_ENV_PREFIXES.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                property_name = name[len(prefix) :].lower().replace("_", ".")
                kafka.setdefault(section, {})[property_name] = value
                break
    if kafka:
        _deep_merge(layer, {"kafka": kafka})
    return layer


def _nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> None:
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
