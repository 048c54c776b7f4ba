"""The `zsc-worker` command: run, classify, demo, calibrate, topics, schema, produce, tail,
replay."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

import orjson

from config import errors as config_errors
from config.kafka import DEFAULT_BOOTSTRAP
from config.settings import DEFAULT_MODEL, load_kafka_settings, load_settings
from config.topics import DEFAULT_TEMPLATE, check_template
from schemas import SCHEMAS, schema_documents
from worker import errors
from worker.classification import rank
from worker.logs import configure_logging
from worker.models import ClassifierLoader, load_nli_classifier
from worker.nli.base import Classifier, Task

log = logging.getLogger("worker")

# Exit codes, so scripts can tell a bad configuration from a model that cannot load.
EXIT_CONFIG = 2
EXIT_MODEL = 3
EXIT_RUNTIME = 1
# `zsc-worker replay --help`: where it starts, what it commits, how it exits.
REPLAY_DESCRIPTION = """\
Send the records of a dead-letter topic back, with their key, value and headers
but without the zsc.* headers: to --to, or to the topic and partition each was
read from.

It reads as a consumer group of its own, zsc-replay.DLQ_TOPIC (--group-id): from
the topic's beginning the first time, then from where the last replay stopped,
so a second replay does not send again what the first one sent. It stops at the
topic's end as of its start. Records not selected are passed over (committed
past) too; nothing is committed past a record that could not be produced, and
a dry run commits nothing.

Exit status: 0; 1 if a record could not be produced (or the brokers failed);
2 for invalid arguments or configuration."""
# Texts scored per classifier call by `classify`.
CLASSIFY_CHUNK = 64


def main(
    argv: Sequence[str] | None = None, load_classifier: ClassifierLoader = load_nli_classifier
) -> int:
    """Entry point of `zsc-worker` and `python -m worker`.

    `load_classifier` is the seam for another model implementation (tests run
    the whole program with a fake one).
    """
    args = _parser().parse_args(argv)
    args.load_classifier = load_classifier
    # The config package's ConfigError (loading the settings) is the base of the
    # worker's, which is a ZscError too: so it is caught first.
    try:
        return int(args.handler(args))
    except config_errors.ConfigError as exc:
        print(f"zsc-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except errors.ModelError as exc:
        print(f"zsc-worker: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except errors.ZscError as exc:
        print(f"zsc-worker: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsc-worker", description="Zero-shot text classification of Kafka events."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="consume, classify and produce until SIGTERM")
    run.add_argument("--config", required=True, help="YAML configuration file")
    run.add_argument("--bootstrap-servers", help="overrides kafka.bootstrap_servers")
    run.add_argument("--group-id", help="overrides kafka.group_id")
    run.add_argument("--model", help="overrides model.name: a hub id or a local directory")
    run.set_defaults(handler=_run)

    classify = commands.add_parser("classify", help="classify texts from arguments or stdin")
    classify.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local directory")
    classify.add_argument("--labels", required=True, help="comma-separated candidate labels")
    classify.add_argument("--template", default=DEFAULT_TEMPLATE, help="hypothesis template")
    classify.add_argument("--multi-label", action="store_true", help="score each label on its own")
    classify.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    classify.add_argument(
        "--dtype", default="auto", help="auto | float32 | bfloat16 | float16 | int8 (CPU)"
    )
    classify.add_argument("texts", nargs="*", metavar="TEXT", help="default: lines of stdin")
    classify.set_defaults(handler=_classify)

    demo = commands.add_parser("demo", help="run the worker on sample events, print the results")
    demo.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local directory")
    demo.add_argument(
        "--bootstrap-servers", help="use this broker instead of starting the embedded one"
    )
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="after the table, keep the broker and the worker up until Ctrl-C"
        " (to change a topic's labels with `zsc-worker topics`)",
    )
    demo.set_defaults(handler=_demo)

    calibrate = commands.add_parser(
        "calibrate", help="fit a topic's temperature and thresholds on labelled events"
    )
    calibrate.add_argument("--config", required=True, type=Path, help="YAML configuration file")
    calibrate.add_argument("--topic", required=True, help="the input topic to calibrate")
    calibrate.add_argument(
        "--data", required=True, type=Path, help='JSON lines: {"text": ..., "labels": [...]}'
    )
    calibrate.add_argument("--model", help="overrides model.name")
    calibrate.add_argument(
        "--holdout", type=float, default=0.3, help="fraction held out to measure (default 0.3)"
    )
    calibrate.add_argument(
        "--target-precision",
        type=float,
        help="thresholds: the lowest reaching this precision, instead of the best F1",
    )
    calibrate.add_argument(
        "--write", action="store_true", help="store the result in the config file"
    )
    calibrate.set_defaults(handler=_calibrate)

    topics = commands.add_parser(
        "topics", help="show, change or list a topic's live entry (records of the control topic)"
    )
    topics.add_argument(
        "action",
        choices=["get", "set", "delete", "history"],
        metavar="get|set|delete|history",
        help="get: the entry in force; set: produce a record; delete: back to the file's entry"
        " (a tombstone); history: every record of the topic and what the workers made of it",
    )
    topics.add_argument(
        "--topic", required=True, metavar="INPUT", help="the input topic (the record's key)"
    )
    topics.add_argument(
        "--control-topic", metavar="T", help="overrides control_topic (ZSC_CONTROL_TOPIC)"
    )
    topics.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the workers' configuration file: records are judged against its entry, as the"
        " workers judge them (without it, against a stand-in)",
    )
    topics.add_argument(
        "--bootstrap-servers", metavar="H:P", help="overrides kafka.bootstrap_servers"
    )
    topics.add_argument("--labels", metavar="a,b", help="set: comma-separated candidate labels")
    topics.add_argument("--template", metavar="T", help="set: the hypothesis template, with {}")
    mode = topics.add_mutually_exclusive_group()
    mode.add_argument(
        "--multi-label",
        dest="multi_label",
        action="store_true",
        default=None,
        help="set: score each label on its own",
    )
    mode.add_argument(
        "--single-label",
        dest="multi_label",
        action="store_false",
        help="set: the labels share one softmax",
    )
    topics.add_argument(
        "--file",
        type=Path,
        metavar="entry.yaml",
        help="set: a YAML `topics` entry (input optional), replacing the record in force",
    )
    topics.set_defaults(handler=_topics)

    schema = commands.add_parser("schema", help="print the JSON Schemas of the events")
    schema.add_argument(
        "name", nargs="?", choices=sorted(SCHEMAS), help="one schema (default: all, by name)"
    )
    schema.set_defaults(handler=_schema)

    produce = commands.add_parser("produce", help="send the events of a JSON-lines file")
    produce.add_argument("file", type=Path, metavar="FILE.jsonl")
    produce.add_argument("--topic", required=True)
    produce.add_argument("--bootstrap-servers", default=DEFAULT_BOOTSTRAP)
    produce.add_argument("--key-field", help="use this field of each event as the record key")
    produce.add_argument(
        "--format",
        choices=["json", "avro", "json_schema"],
        default="json",
        help="avro | json_schema: each event written with --schema in the Confluent wire format",
    )
    produce.add_argument("--schema", type=Path, help="the Avro or JSON Schema file (--format)")
    produce.add_argument(
        "--schema-registry",
        default=os.environ.get("ZSC_SCHEMA_REGISTRY_URL"),
        metavar="URL",
        help="where --schema is registered, as <topic>-value (default: $ZSC_SCHEMA_REGISTRY_URL)",
    )
    produce.set_defaults(handler=_produce)

    tail = commands.add_parser(
        "tail", help="print enriched events as they arrive (a table on a terminal)"
    )
    tail.add_argument("--topic", required=True, action="append", help="repeat for several")
    tail.add_argument("--bootstrap-servers", default=DEFAULT_BOOTSTRAP)
    tail.add_argument("--from-beginning", action="store_true", help="not only new records")
    tail.add_argument("--max", type=int, dest="max_records", help="stop after this many")
    tail.add_argument(
        "--idle-timeout", type=float, help="stop after this many seconds without a record"
    )
    tail.add_argument(
        "--format",
        choices=["auto", "table", "json"],
        default="auto",
        help="auto: a table on a terminal, JSON lines otherwise",
    )
    tail.add_argument(
        "--schema-registry",
        default=os.environ.get("ZSC_SCHEMA_REGISTRY_URL"),
        metavar="URL",
        help="decode Avro and JSON Schema records with it (default: $ZSC_SCHEMA_REGISTRY_URL)",
    )
    tail.set_defaults(handler=_tail)

    replay = commands.add_parser(
        "replay",
        help="send dead-lettered records back to their topics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=REPLAY_DESCRIPTION,
    )
    replay.add_argument(
        "--from",
        dest="dead_letter_topic",
        required=True,
        metavar="DLQ_TOPIC",
        help="the dead-letter topic to read",
    )
    replay.add_argument(
        "--to", metavar="TOPIC", help="default: each record's zsc.source.topic (and partition)"
    )
    replay.add_argument(
        "--error-type",
        action="append",
        metavar="T",
        help="only records of this zsc.error.type (text_too_long, ...); repeat for several",
    )
    replay.add_argument(
        "--since",
        metavar="ISO8601",
        help="only records dead-lettered at or after this time (without an offset: UTC)",
    )
    replay.add_argument(
        "--max", type=int, dest="max_records", metavar="N", help="stop after N records selected"
    )
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be done to each record; produce and commit nothing",
    )
    replay.add_argument(
        "--group-id",
        metavar="G",
        help="the group whose offsets keep the position (default zsc-replay.DLQ_TOPIC)",
    )
    replay.add_argument(
        "--bootstrap-servers", metavar="H:P", help="overrides kafka.bootstrap_servers"
    )
    replay.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the workers' configuration file: its kafka settings (security properties too)",
    )
    replay.set_defaults(handler=_replay)
    return parser


def _run(args: argparse.Namespace) -> int:
    from worker.app import Worker
    from worker.formats import needs_registry
    from worker.kafka.clients import check_client_properties
    from worker.metrics import Health, Metrics, MetricsServer
    from worker.models import Models, forward_budget
    from worker.nli.cache import CachingClassifier
    from worker.registry import make_registry_client

    settings = load_settings(
        args.config,
        {
            "kafka.bootstrap_servers": args.bootstrap_servers,
            "kafka.group_id": args.group_id,
            "model.name": args.model,
        },
    )
    configure_logging(settings.log_level, settings.log_format)
    stop = _stop_on_signals()
    metrics, health = Metrics(), Health()
    server = None
    if settings.metrics_port:
        server = MetricsServer(metrics, health, settings.metrics_port)
        server.start()
    try:
        check_client_properties(settings)
        if needs_registry(settings):
            # Its properties judged before the models load, as the Kafka clients' are.
            make_registry_client(settings.schema_registry)
        models = Models.load(settings, args.load_classifier, forward_budget(settings))
        # A GPU's batching bounds where every model runs on one.
        devices = {model.info["device"].split(":")[0] for model in models}
        device_type = devices.pop() if len(devices) == 1 else "mixed"
        if (adjusted := settings.for_device(device_type)) is not settings:
            settings = adjusted
            log.info(
                "on %s: batching.max_events %d, batching.max_tokens %d (set them to change)",
                device_type,
                settings.batching.max_events,
                settings.batching.max_tokens,
            )
        cache = settings.result_cache
        if cache.max_entries:
            # A cache per model: one model's scores are never served for another's.
            models = models.wrapped(
                lambda classifier: CachingClassifier(
                    classifier, cache.max_entries, cache.ttl_s, metrics.observe_cache_lookup
                )
            )
        Worker(settings, models, metrics, health).run(stop)
    finally:
        if server is not None:
            server.stop()
    return 0


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: the worker stops polling and shuts down."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def _classify(args: argparse.Namespace) -> int:
    labels = tuple(label.strip() for label in args.labels.split(",") if label.strip())
    if not labels:
        raise errors.ConfigError("--labels: give at least one label")
    try:
        check_template(args.template)
    except ValueError as exc:
        raise errors.ConfigError(f"--template: {exc}") from None
    task = Task(labels, args.template, args.multi_label)
    classifier = args.load_classifier(args.model, args.device, args.dtype, None)
    texts = args.texts or _stdin_texts(sys.stdin)
    for chunk in _chunks(texts, CLASSIFY_CHUNK):
        _print_results(classifier, task, chunk, sys.stdout)
    return 0


def _stdin_texts(stream: TextIO) -> Iterator[str]:
    """Non-blank lines of stdin: plain text, or JSON objects with a `text` field."""
    for line in stream:
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                event = None
            if isinstance(event, dict):
                text = event.get("text")
                if not isinstance(text, str) or not text.strip():
                    raise errors.ConfigError(f"stdin: a JSON line has no text: {line[:80]}")
                yield text
                continue
        yield line


def _chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _print_results(classifier: Classifier, task: Task, texts: list[str], out: TextIO) -> None:
    results = classifier.classify([classifier.encode(text, task) for text in texts])
    for text, result in zip(texts, results, strict=True):
        labels, scores = rank(task.labels, result.scores)
        line = {"sequence": text, "labels": labels, "scores": scores}
        out.write(orjson.dumps(line).decode() + "\n")
    out.flush()


def _calibrate(args: argparse.Namespace) -> int:
    from worker.calibrate_command import report, run_calibration, write_calibration

    if not 0 < args.holdout < 1:
        raise errors.ConfigError("--holdout: give a fraction between 0 and 1")
    settings = load_settings(args.config, {"model.name": args.model})
    # The topic's own model where it has one (an unknown topic is refused below).
    model = next((settings.model_of(t) for t in settings.topics if t.input == args.topic), None)
    model = model or settings.model
    classifier = args.load_classifier(model.name, model.device, model.dtype, None)
    result = run_calibration(
        settings, args.topic, classifier, args.data, args.holdout, args.target_precision
    )
    report(result, sys.stdout)
    if args.write:
        write_calibration(args.config, args.topic, result)
        print(f"written to {args.config}", file=sys.stdout)
    return 0


def _topics(args: argparse.Namespace) -> int:
    from worker.topics_command import command_settings, flag_keys, read_entry_file, run_topics

    flags = flag_keys(args.labels, args.template, args.multi_label)
    if args.action == "set" and not flags and args.file is None:
        raise errors.ConfigError(
            "topics set: give --labels, --template, --multi-label, --single-label or --file"
        )
    if args.action != "set" and (flags or args.file is not None):
        raise errors.ConfigError(
            f"topics {args.action}: --labels, --template, --multi-label, --single-label and"
            " --file are for `set`"
        )
    entry_keys = read_entry_file(args.file) if args.file is not None else None
    settings = command_settings(args.topic, args.config, args.bootstrap_servers, args.control_topic)
    configure_logging("WARNING", settings.log_format)
    with_config = args.config is not None
    return run_topics(
        args.action, settings, args.topic, with_config, sys.stdout, sys.stderr, flags, entry_keys
    )


def _schema(args: argparse.Namespace) -> int:
    documents = schema_documents()
    if args.name:
        sys.stdout.write(documents[f"{args.name}.schema.json"])
    else:
        combined = {name: orjson.loads(documents[f"{name}.schema.json"]) for name in SCHEMAS}
        sys.stdout.write(orjson.dumps(combined, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _produce(args: argparse.Namespace) -> int:
    from worker.tool_formats import value_encoder
    from worker.tools import produce_file

    encode = value_encoder(args.format, args.schema, args.schema_registry, args.topic)
    sent = produce_file(
        args.bootstrap_servers, args.file, args.topic, args.key_field, sys.stderr.isatty(), encode
    )
    print(f"{sent} events sent to {args.topic}", file=sys.stderr)
    return 0


def _tail(args: argparse.Namespace) -> int:
    from worker.tool_formats import ValueDecoder
    from worker.tools import tail

    as_table = args.format == "table" or (args.format == "auto" and sys.stdout.isatty())
    tail(
        args.bootstrap_servers,
        args.topic,
        sys.stdout,
        as_table=as_table,
        from_beginning=args.from_beginning,
        max_records=args.max_records,
        idle_timeout_s=args.idle_timeout,
        decode=ValueDecoder(args.schema_registry),
    )
    return 0


def _replay(args: argparse.Namespace) -> int:
    from worker.replay_command import (
        ReplayOptions,
        Selection,
        default_group,
        parse_since,
        replay,
    )

    if args.max_records is not None and args.max_records < 1:
        raise errors.ConfigError("--max: give a number of records, 1 or more")
    if args.to == args.dead_letter_topic:
        raise errors.ConfigError("--to: the dead-letter topic itself")
    since = parse_since(args.since) if args.since is not None else None
    kafka = load_kafka_settings(args.config, {"kafka.bootstrap_servers": args.bootstrap_servers})
    configure_logging("WARNING", "text")
    options = ReplayOptions(
        args.dead_letter_topic,
        args.to,
        Selection(frozenset(args.error_type or ()), since),
        args.max_records,
        args.dry_run,
        args.group_id or default_group(args.dead_letter_topic),
    )
    return replay(kafka, options, sys.stdout)


def _demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return run_demo(
        args.model,
        args.bootstrap_servers,
        keep_running=_stop_on_signals() if args.keep_running else None,
    )
