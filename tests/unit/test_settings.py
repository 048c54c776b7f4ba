"""Configuration: the YAML file, `ZSC_*` variables and flags, in that order of precedence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.kafka import KafkaSettings
from config.settings import DEFAULT_MODEL, load_kafka_settings, load_settings

EXAMPLE = Path(__file__).parents[2] / "config" / "example.yaml"
MINIMAL = """
topics:
  - input: posts
    output: posts.classified
    labels: [sports, politics]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_match_the_design(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), environ={})
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.group_id == "zsc-worker"
    assert settings.model.name == DEFAULT_MODEL
    assert (settings.model.device, settings.model.dtype) == ("auto", "auto")
    assert (settings.batching.max_events, settings.batching.max_tokens) == (64, 8192)
    assert settings.batching.max_wait_ms == 50
    assert settings.processing_guarantee == "at-least-once"
    assert settings.metrics_port == 9108
    [topic] = settings.topics
    assert topic.dead_letter == "posts.dlq"
    assert topic.hypothesis_template == "This example is {}."
    assert topic.multi_label is False and topic.threshold == 0.5
    assert topic.text_field == "text" and topic.allow_event_labels is False


def test_the_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE, environ={})
    assert [t.input for t in settings.topics] == ["posts", "comments"]


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "kafka: {group_id: from-file, bootstrap_servers: file:1}\n")
    environ = {"ZSC_GROUP_ID": "from-env", "ZSC_MAX_WAIT_MS": "7", "ZSC_MODEL": "/models/x"}
    settings = load_settings(path, {"kafka.group_id": "from-flag", "model.name": None}, environ)
    assert settings.kafka.group_id == "from-flag"
    assert settings.kafka.bootstrap_servers == "file:1"
    assert settings.batching.max_wait_ms == 7
    assert settings.model.name == "/models/x", "a flag left out does not hide the environment"


def test_kafka_settings_alone_take_the_same_layers_and_need_no_topics(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "kafka: {bootstrap_servers: file:1, properties: {security.protocol: SSL}}\n"
        "batching: {max_events: 0}\n",
    )
    kafka = load_kafka_settings(path, {"kafka.bootstrap_servers": None}, environ={})
    assert kafka.bootstrap_servers == "file:1", "the file's other keys are not read"
    assert kafka.properties == {"security.protocol": "SSL"}
    environ = {"ZSC_BOOTSTRAP_SERVERS": "env:1", "ZSC_KAFKA_SASL_PASSWORD": "pw"}
    kafka = load_kafka_settings(path, environ=environ)
    assert kafka.bootstrap_servers == "env:1"
    assert kafka.properties["sasl.password"] != "pw", "secrets stay wrapped"
    flagged = load_kafka_settings(path, {"kafka.bootstrap_servers": "flag:1"}, environ)
    assert flagged.bootstrap_servers == "flag:1"
    assert load_kafka_settings(None, environ={}).bootstrap_servers == "127.0.0.1:9092"
    with pytest.raises(ConfigError, match=r"kafka\.group_idd: Extra inputs are not permitted"):
        load_kafka_settings(write(tmp_path, "kafka: {group_idd: x}\n"), environ={})


@pytest.mark.parametrize(
    ("extra", "key", "reason"),
    [
        ("batching: {max_events: 0}", "batching.max_events", "greater than or equal to 1"),
        ("model: {dtype: float8}", "model.dtype", "'bfloat16', 'float16' or 'int8'"),
        ("model: {device: tpu}", "model.device", "auto, cpu, cuda or cuda:N"),
        ("processing_guarantee: at-most-once", "processing_guarantee", "exactly-once"),
        ("metrics_port: 70000", "metrics_port", "less than or equal to 65535"),
        ("kafka: {group_idd: x}", "kafka.group_idd", "Extra inputs are not permitted"),
    ],
)
def test_bad_values_name_the_key_and_reason(
    tmp_path: Path, extra: str, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, MINIMAL + extra + "\n"), environ={})
    message = str(caught.value)
    assert key in message and reason in message


@pytest.mark.parametrize(
    ("topic", "key", "reason"),
    [
        ("{input: a, output: b, labels: []}", "topics.0.labels", "at least 1 item"),
        ("{input: a, output: b, labels: [x, x]}", "topics.0.labels", "distinct"),
        (
            "{input: a, output: b, labels: [x], hypothesis_template: nope}",
            "hypothesis_template",
            "{}",
        ),
        ("{input: a, output: b, labels: [x], threshold: 2}", "topics.0.threshold", "less than"),
        ("{output: b, labels: [x]}", "topics.0.input", "Field required"),
        (
            "{input: a, output: b, labels: [x], long_text: {strategy: split}}",
            "topics.0.long_text.strategy",
            "'truncate' or 'chunk'",
        ),
        (
            "{input: a, output: b, labels: [x], long_text: {window: 64, stride: 64}}",
            "topics.0.long_text",
            "stride must be smaller than window",
        ),
        (
            "{input: a, output: b, labels: [x], long_text: {max_chunks: 0}}",
            "topics.0.long_text.max_chunks",
            "greater than or equal to 1",
        ),
        (
            "{input: a, output: b, labels: [x], include_logits: true,"
            " long_text: {strategy: chunk}}",
            "topics.0",
            "include_logits cannot be combined with long_text.strategy chunk",
        ),
    ],
)
def test_bad_topics_name_the_key_and_reason(
    tmp_path: Path, topic: str, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, f"topics:\n  - {topic}\n"), environ={})
    assert key in str(caught.value) and reason in str(caught.value)


def test_topics_are_required_and_inputs_distinct(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"topics: Field required"):
        load_settings(write(tmp_path, "metrics_port: 0\n"), environ={})
    twice = MINIMAL + "  - {input: posts, output: other, labels: [x]}\n"
    with pytest.raises(ConfigError, match="each input topic may appear once"):
        load_settings(write(tmp_path, twice), environ={})


LOOP_REASON = "is also an input topic"
CONSUMED_AGAIN = "its records would be consumed again"


@pytest.mark.parametrize(
    ("topics", "key"),
    [
        (
            "  - {input: posts, output: posts.out, labels: [x]}\n"
            "  - {input: comments, output: posts, labels: [x]}\n",
            "topics.1.output: 'posts'",
        ),
        ("  - {input: posts, output: posts, labels: [x]}\n", "topics.0.output: 'posts'"),
        (
            "  - {input: posts, output: posts.out, labels: [x],"
            " routes: [{topic: comments, none_above: 0.5}]}\n"
            "  - {input: comments, output: comments.out, labels: [x]}\n",
            "topics.0.routes.0.topic: 'comments'",
        ),
        (
            "  - {input: posts, output: posts.out, labels: [x], dead_letter: comments}\n"
            "  - {input: comments, output: comments.out, labels: [x]}\n",
            "topics.0.dead_letter: 'comments'",
        ),
        (
            "  - {input: posts, output: posts.out, labels: [x]}\n"
            "  - {input: posts.dlq, output: other, labels: [x]}\n",
            "topics.0.dead_letter: 'posts.dlq'",
        ),
    ],
    ids=["output-other-input", "output-own-input", "route", "dead-letter", "default-dead-letter"],
)
def test_a_topic_written_and_also_read_is_refused_by_its_key(
    tmp_path: Path, topics: str, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "topics:\n" + topics), environ={})
    message = str(caught.value)
    assert key in message and LOOP_REASON in message and CONSUMED_AGAIN in message


def test_topics_that_write_elsewhere_load(tmp_path: Path) -> None:
    topics = (
        "topics:\n"
        "  - {input: posts, output: posts.out, labels: [x],"
        " routes: [{topic: posts.unsure, none_above: 0.5}]}\n"
        "  - {input: comments, output: posts.out, labels: [x], dead_letter: posts.dlq}\n"
    )
    settings = load_settings(write(tmp_path, topics), environ={})
    assert [t.dead_letter for t in settings.topics] == ["posts.dlq", "posts.dlq"]


def test_run_exits_with_the_config_status_and_the_looping_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker import cli

    config = write(tmp_path, "topics: [{input: posts, output: posts, labels: [x]}]\n")
    # A model that does not exist: had it been loaded first, this would be a model error.
    argv = ["run", "--config", str(config), "--model", str(tmp_path / "nothing")]
    assert cli.main(argv) == cli.EXIT_CONFIG
    stderr = capsys.readouterr().err
    assert "topics.0.output: 'posts'" in stderr and CONSUMED_AGAIN in stderr


AVRO = MINIMAL + "    format: avro\n"


def test_a_registry_format_needs_the_registry_url_and_names_the_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"topics\.0\.format: avro needs schema_registry\.url"):
        load_settings(write(tmp_path, AVRO), environ={})
    settings = load_settings(write(tmp_path, MINIMAL), environ={})
    assert settings.topics[0].format == "json" and not settings.schema_registry.configured


def test_the_registry_comes_from_the_environment_and_its_login_is_never_shown(
    tmp_path: Path,
) -> None:
    environ = {
        "ZSC_SCHEMA_REGISTRY_URL": "http://registry:8081/apis/ccompat/v7",
        "ZSC_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "user:s3cret",
    }
    settings = load_settings(write(tmp_path, AVRO), environ=environ)
    registry = settings.schema_registry
    assert registry.url == environ["ZSC_SCHEMA_REGISTRY_URL"]
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)
    assert registry.client_config()["basic.auth.user.info"] == "user:s3cret"
    with pytest.raises(ConfigError, match=r"schema_registry\.url: Value error, must be http"):
        load_settings(write(tmp_path, AVRO), environ={"ZSC_SCHEMA_REGISTRY_URL": "registry:8081"})


def test_protobuf_is_refused_at_start_up_saying_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker import cli

    config = write(tmp_path, MINIMAL + "    format: protobuf\n")
    argv = ["run", "--config", str(config), "--model", str(tmp_path / "nothing")]
    assert cli.main(argv) == cli.EXIT_CONFIG
    stderr = capsys.readouterr().err
    assert "topics.0.format" in stderr and "protobuf is not supported yet" in stderr


def test_registry_client_properties_are_judged_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker import cli

    registry = "schema_registry: {url: 'http://registry:8081', colour: red}\n"
    config = write(tmp_path, registry + AVRO)
    argv = ["run", "--config", str(config), "--model", str(tmp_path / "nothing")]
    assert cli.main(argv) == cli.EXIT_CONFIG
    assert "schema_registry: Unrecognized properties: colour" in capsys.readouterr().err


def test_unreadable_or_invalid_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "topics: [\n"), environ={})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(write(tmp_path, "- a\n"), environ={})


def test_bad_environment_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"batching\.max_tokens"):
        load_settings(write(tmp_path, MINIMAL), environ={"ZSC_MAX_BATCH_TOKENS": "lots"})


def test_log_format_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), environ={"ZSC_LOG_FORMAT": "json"})
    assert settings.log_format == "json"


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ("kafka: {consumer: {heartbeat.interval.ms: 10000}}", ["heartbeat.interval.ms", "10000"]),
        (
            "kafka: {properties: {session.timeout.ms: 6000},"
            " consumer: {heartbeat.interval.ms: 6000}}",
            ["heartbeat.interval.ms", "session.timeout.ms (6000)"],
        ),
        ("kafka: {consumer: {max.poll.interval.ms: 7000}}", ["max.poll.interval.ms", "(10000)"]),
        ("kafka: {consumer: {enable.auto.offset.store: true}}", ["enable.auto.offset.store"]),
        (
            "processing_guarantee: exactly-once\nkafka: {consumer: {enable.auto.commit: 'true'}}",
            ["kafka.consumer", "enable.auto.commit"],
        ),
        (
            "processing_guarantee: exactly-once\nkafka: {producer: {transactional.id: shared}}",
            ["kafka.producer", "transactional.id"],
        ),
    ],
)
def test_client_properties_that_cannot_work_are_refused_at_start_up(
    tmp_path: Path, extra: str, names: list[str]
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, MINIMAL + extra + "\n"), environ={})
    for name in names:
        assert name in str(raised.value)


@pytest.mark.parametrize(
    "extra",
    [
        "kafka: {consumer: {session.timeout.ms: 6000, max.poll.interval.ms: 7000}}",
        "kafka: {consumer: {group.protocol: consumer, max.poll.interval.ms: 7000}}",
        "kafka: {consumer: {enable.auto.offset.store: false, enable.auto.commit: true}}",
        "processing_guarantee: exactly-once\nkafka: {consumer: {enable.auto.commit: 'false'}}",
    ],
)
def test_consistent_client_properties_are_accepted(tmp_path: Path, extra: str) -> None:
    load_settings(write(tmp_path, MINIMAL + extra + "\n"), environ={})


def test_client_property_checks_read_the_environment(tmp_path: Path) -> None:
    environ = {"ZSC_KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS": "12000"}
    with pytest.raises(ConfigError, match=r"heartbeat\.interval\.ms \(12000\)"):
        load_settings(write(tmp_path, MINIMAL), environ=environ)


def test_a_gpu_gets_larger_batches_where_the_config_sets_none(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), environ={})
    assert settings.for_device("cpu") is settings
    gpu = settings.for_device("cuda")
    assert (gpu.batching.max_events, gpu.batching.max_tokens) == (512, 65536)
    assert gpu.batching.max_wait_ms == settings.batching.max_wait_ms


def test_batching_bounds_the_config_sets_stay_on_a_gpu(tmp_path: Path) -> None:
    config = write(tmp_path, MINIMAL)
    one = load_settings(config, environ={"ZSC_MAX_BATCH_TOKENS": "4096"})
    gpu = one.for_device("cuda")
    assert (gpu.batching.max_events, gpu.batching.max_tokens) == (512, 4096)
    both = load_settings(config, {"batching.max_events": 8}, {"ZSC_MAX_BATCH_TOKENS": "4096"})
    assert both.for_device("cuda") is both


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ((), 64),
        (("file",), 10),
        (("environment",), 20),
        (("file", "environment"), 20),
        (("file", "flag"), 30),
        (("file", "environment", "flag"), 30),
    ],
)
def test_each_layer_beats_the_ones_below_for_a_nested_key(
    tmp_path: Path, given: tuple[str, ...], expected: int
) -> None:
    text = MINIMAL + ("batching: {max_events: 10}\n" if "file" in given else "")
    environ = {"ZSC_MAX_BATCH_EVENTS": "20"} if "environment" in given else {}
    flags = {"batching.max_events": 30} if "flag" in given else None
    settings = load_settings(write(tmp_path, text), flags, environ)
    assert settings.batching.max_events == expected
    assert settings.batching.max_tokens == 8192, "a layer sets only the keys it names"


def test_environment_properties_join_the_files_and_win_for_the_same_name(
    tmp_path: Path,
) -> None:
    text = MINIMAL + (
        "kafka:\n"
        "  group_id: from-file\n"
        "  consumer: {session.timeout.ms: 6000, fetch.min.bytes: 1}\n"
        "  properties: {security.protocol: SSL}\n"
    )
    environ = {
        "ZSC_KAFKA_CONSUMER_SESSION_TIMEOUT_MS": "8000",
        "ZSC_KAFKA_PRODUCER_LINGER_MS": "20",
        "ZSC_KAFKA_SSL_CA_LOCATION": "/etc/ca.pem",
        "ZSC_BOOTSTRAP_SERVERS": "env:9092",
    }
    kafka = load_settings(write(tmp_path, text), environ=environ).kafka
    assert kafka.consumer == {"session.timeout.ms": "8000", "fetch.min.bytes": 1}
    assert kafka.producer == {"linger.ms": "20"}
    assert kafka.properties == {"security.protocol": "SSL", "ssl.ca.location": "/etc/ca.pem"}
    assert (kafka.group_id, kafka.bootstrap_servers) == ("from-file", "env:9092")


def test_the_config_package_does_not_import_the_worker() -> None:
    code = (
        "import sys, config.settings, config.reference\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'worker'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_the_workers_config_error_is_a_worker_error_and_a_config_error() -> None:
    from worker import errors

    raised = errors.ConfigError("--labels: give at least one label")
    assert isinstance(raised, errors.ZscError) and isinstance(raised, ConfigError)


def test_a_clients_own_properties_win_over_the_shared_ones() -> None:
    kafka = KafkaSettings(
        properties={"group.protocol": "consumer", "client.id": "zsc"},
        consumer={"group.protocol": "classic"},
    )
    assert kafka.client_properties("consumer") == {"group.protocol": "classic", "client.id": "zsc"}
    assert kafka.classic_group_protocol
    assert not KafkaSettings(properties={"group.protocol": "consumer"}).classic_group_protocol
