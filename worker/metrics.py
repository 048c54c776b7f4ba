"""Prometheus metrics and the /metrics, /healthz and /readyz endpoints."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

# Bucket bounds chosen for CPU and GPU batches alike: from a few ms to a minute.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
EVENTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Tokenizing one event takes from tens of microseconds to, for a 100k-character
# text, a few hundred milliseconds.
TOKENIZE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)
TOKENS_BUCKETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
# A chunked text has 2 chunks (just over the model's length) up to long_text.max_chunks.
CHUNKS_BUCKETS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 64)

log = logging.getLogger(__name__)


class Metrics:
    """The worker's metrics, in a registry of their own so several workers can share a process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "zsc_events_consumed_total", "Records read from input topics.", ["topic"], registry=r
        )
        self.classified = Counter(
            "zsc_events_classified_total",
            "Events classified and acknowledged on the output topic.",
            ["topic"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "zsc_events_dead_lettered_total",
            "Records sent to a dead-letter topic, by reason.",
            ["topic", "reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "zsc_batch_size",
            "Events per classified batch.",
            ["model"],
            buckets=EVENTS_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "zsc_batch_tokens",
            "Padded premise+hypothesis tokens per batch.",
            ["model"],
            buckets=TOKENS_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "zsc_queue_wait_seconds",
            "From an event's read to its batch starting on the model (batching and queueing).",
            ["model"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.tokenization_seconds = Histogram(
            "zsc_tokenization_seconds",
            "Tokenizing one event: its text once, paired with each hypothesis.",
            buckets=TOKENIZE_BUCKETS,
            registry=r,
        )
        self.text_chunks = Histogram(
            "zsc_text_chunks",
            "Chunks a long text was cut into (long_text.strategy chunk); texts that fit are not"
            " counted.",
            ["topic"],
            buckets=CHUNKS_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "zsc_inference_seconds",
            "Time the model took for one batch.",
            ["model"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "zsc_end_to_end_seconds",
            "From the input record's timestamp to its output's acknowledgement.",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "zsc_consumer_lag",
            "High watermark minus the committed position, per partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.paused = Gauge(
            "zsc_paused",
            "1 while every input partition is paused for backpressure.",
            registry=r,
        )
        self.paused_partitions = Gauge(
            "zsc_paused_partitions",
            "Input partitions paused now: every one under backpressure, else those whose"
            " records wait for the schema registry.",
            registry=r,
        )
        self.model = Info(
            "zsc_model",
            "A model serving the worker (one series per model): id, device, precision, runtime.",
            ["model"],
            registry=r,
        )
        self.rebalances = Counter(
            "zsc_rebalances_total", "Partition assignment changes, by kind.", ["kind"], registry=r
        )
        self.stale_records = Counter(
            "zsc_stale_records_total",
            "Records dropped unread because their partition is not (or no longer) read from"
            " there by this worker: fetched before a rebalance or seek; their owner reads them.",
            ["topic"],
            registry=r,
        )
        self.inference_failures = Counter(
            "zsc_inference_failures_total", "Batches the model failed on.", ["model"], registry=r
        )
        self.config_info = Gauge(
            "zsc_config_info",
            "1 for the configuration version each input topic is served with now.",
            ["topic", "version"],
            registry=r,
        )
        self.control_records = Counter(
            "zsc_control_records_total",
            "Control-topic records applied to the topic entries in force.",
            registry=r,
        )
        self.control_records_rejected = Counter(
            "zsc_control_records_rejected_total",
            "Control-topic records that changed nothing: invalid, or for no input topic here.",
            registry=r,
        )
        self.cache_lookups = Counter(
            "zsc_result_cache_lookups_total",
            "Result cache lookups, by outcome (hit or miss).",
            ["outcome"],
            registry=r,
        )

    def observe_end_to_end(self, timestamp_ms: int) -> None:
        """Time from an input record's timestamp to its output's acknowledgement, if it has one."""
        if timestamp_ms > 0:
            self.end_to_end_seconds.observe(max(0.0, time.time() - timestamp_ms / 1000))

    def config_in_force(self, topic: str, version: str, replaced: str | None = None) -> None:
        """`topic` is served with configuration `version` now, no longer with `replaced`."""
        if replaced is not None and replaced != version:
            self.config_info.remove(topic, replaced)
        self.config_info.labels(topic, version).set(1)

    def model_served(self, info: Mapping[str, str]) -> None:
        """A model serves the worker: its `zsc_model_info` series, labelled by its name, and
        its per-batch series, at zero until its first batch."""
        name = info["model"]
        self.model.labels(name).info({k: v for k, v in info.items() if k != "model"})
        for per_batch in (
            self.batch_size,
            self.batch_tokens,
            self.queue_wait_seconds,
            self.inference_seconds,
            self.inference_failures,
        ):
            per_batch.labels(name)

    def observe_cache_lookup(self, hit: bool) -> None:
        """Count one result cache lookup."""
        self.cache_lookups.labels("hit" if hit else "miss").inc()


class Health:
    """What /healthz and /readyz report; set by the worker as it starts and runs.

    Written by the worker's thread, read by the HTTP server's: the flags are events.
    """

    def __init__(self) -> None:
        self.model_loaded = threading.Event()
        self.group_joined = threading.Event()
        self.broker_reachable = threading.Event()
        self.registry_reachable = threading.Event()
        # Reachable until a client says otherwise: before the group is joined
        # the worker is not ready anyway.
        self.broker_reachable.set()
        self.registry_reachable.set()

    @property
    def ready(self) -> bool:
        """Ready once every model is loaded and the group joined, while a broker (and the
        schema registry, where topics need it) answers."""
        return (
            self.model_loaded.is_set()
            and self.group_joined.is_set()
            and self.broker_reachable.is_set()
            and self.registry_reachable.is_set()
        )

    def registry_down(self) -> None:
        """The schema registry cannot be reached: not ready until `registry_up` (the registry
        status logs it)."""
        self.registry_reachable.clear()

    def registry_up(self) -> None:
        """The schema registry answered again."""
        self.registry_reachable.set()

    def broker_down(self, reason: str) -> None:
        """No broker can be reached: not ready until `broker_up`."""
        if self.broker_reachable.is_set():
            log.warning("not ready: no broker reachable (%s)", reason)
        self.broker_reachable.clear()

    def broker_up(self) -> None:
        """A broker answered again."""
        if not self.broker_reachable.is_set():
            log.info("a broker answers again: ready")
        self.broker_reachable.set()


class MetricsServer:
    """A small HTTP server: /metrics (Prometheus text), /healthz and /readyz."""

    def __init__(self, metrics: Metrics, health: Health, port: int, host: str = "0.0.0.0") -> None:
        handler = _handler(metrics, health)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="zsc-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful when asked for port 0 in tests)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


def _handler(metrics: Metrics, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                ready = health.ready
                self._send(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes every few seconds would drown the worker's own log."""

    return Handler
