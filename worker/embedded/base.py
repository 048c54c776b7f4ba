"""What every embedded broker shares: a child process on loopback, its log, start-up, shutdown.

`LoopbackProcess` owns a server run as a child process: it spawns it with its
output in a log file inside a private temporary directory, waits until it is
ready, and stops it with its `stop_signal` (SIGKILL after a grace period).
Start-up failures become `BrokerError` carrying the tail of that log, since the
log is deleted with the directory. A subclass says how to launch its server
(`_prepare`) and when it is ready (`_wait_until_ready`): `EmbeddedBroker` once
it answers Kafka metadata requests (the tests' schema registry is another).
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from worker.errors import BrokerError

LOOPBACK = "127.0.0.1"
"""Every embedded broker binds and advertises this address only: nothing outside the host."""

LOG_FILE_NAME = "server.log"
LOG_TAIL_LINES = 40
"""Enough for a Java exception and its cause, short enough to read in a pytest report."""

# Noise for a human reading an error: Java stack frames (the exception's message
# and its "Caused by" lines stay) and the colour codes of Rust's tracing output.
_STACK_FRAME = re.compile(r"^\s+(at |\.\.\. \d+ more)")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

_READY_POLL_INTERVAL_S = 0.05
_METADATA_TIMEOUT_S = 2.0
"""One metadata attempt; a booting broker that accepted the connection answers well within it."""


def free_loopback_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct free TCP ports on the loopback address.

    The probe sockets are closed before the broker binds, so another process
    may take a port in between; the broker then fails to start and its log,
    quoted in the `BrokerError`, names the port.
    """
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((LOOPBACK, 0))
        return [probe.getsockname()[1] for probe in probes]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file without stack frames, or why there are none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    readable = [
        _ANSI_ESCAPE.sub("", line) for line in text.splitlines() if not _STACK_FRAME.match(line)
    ]
    return "\n".join(readable[-lines:]) if readable else "(the log is empty)"


@dataclass(frozen=True, slots=True)
class Launch:
    """How to run one broker: its command line, its client port and its environment."""

    command: Sequence[str]
    port: int
    env: Mapping[str, str] | None = None
    """None inherits this process's environment."""


class LoopbackProcess(abc.ABC):
    """A server run as a child process on a loopback port.

    Use as a context manager or call `start()` and `stop()`. `stop()` is
    idempotent and also runs at interpreter exit, so a forgotten server does not
    outlive the program.
    """

    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    """Asks the server for a clean shutdown; SIGKILL follows after the grace period."""

    def __init__(self, start_timeout_s: float, stop_timeout_s: float) -> None:
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._port: int | None = None

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """How messages name the server: "the tansu broker", "Apicurio Registry"."""

    @abc.abstractmethod
    def _prepare(self, workdir: Path) -> Launch:
        """Write whatever the server needs into `workdir` and say how to launch it.

        Runs before the server process starts; a failure here should raise
        `BrokerError` (the log file at `self.log_path` is already open for
        helper commands to write to).
        """

    @abc.abstractmethod
    def _wait_until_ready(self, port: int) -> None:
        """Block until the server, started on `port`, serves; `BrokerError` where it exits
        first or takes longer than the start timeout (`_poll_until` checks both)."""

    @property
    def port(self) -> int:
        """The loopback port it serves on; only while it runs."""
        if self._port is None:
            raise BrokerError(f"{self.name} is not running")
        return self._port

    @property
    def log_path(self) -> Path:
        """The server's log file; it is deleted with the server's directory on `stop()`."""
        if self._workdir is None:
            raise BrokerError(f"{self.name} has no directory: it is not running")
        return self._workdir / LOG_FILE_NAME

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the server and return once it is ready.

        Raises `BrokerError` (with the tail of the server's log) when it exits
        or is not ready within the start timeout; nothing is left behind.
        """
        if self._workdir is not None:
            raise BrokerError(f"{self.name} is already started")
        self._workdir = Path(tempfile.mkdtemp(prefix=f"zsc-{type(self).__name__.lower()}-"))
        atexit.register(self.stop)
        try:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the server
            launch = self._prepare(self._workdir)
            try:
                self._process = subprocess.Popen(
                    list(launch.command),
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    cwd=self._workdir,
                    env=None if launch.env is None else dict(launch.env),
                )
            except OSError as exc:
                raise BrokerError(f"cannot run {self.name}: {exc}") from None
            self._wait_until_ready(launch.port)
        except BaseException:
            self.stop()
            raise
        self._port = launch.port
        return self

    def stop(self) -> None:
        """Stop the server (`stop_signal`, SIGKILL after the grace period); delete its files."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        self._port = None
        if process is not None and process.poll() is None:
            # A stopped (SIGSTOP) process would act on no signal but SIGKILL.
            process.send_signal(signal.SIGCONT)
            process.send_signal(self.stop_signal)
            try:
                process.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run_step(self, what: str, command: Sequence[str], timeout_s: float) -> None:
        """Run a preparation command (e.g. formatting storage) with its output in the log."""
        assert self._log is not None
        self._log.write(f"$ {' '.join(command)}\n".encode())
        self._log.flush()
        try:
            subprocess.run(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                timeout=timeout_s,
                check=True,
            )
        except subprocess.CalledProcessError as exc:
            raise self._step_error(what, f"exit code {exc.returncode}") from None
        except subprocess.TimeoutExpired:
            raise self._step_error(what, f"no result within {timeout_s:.0f} s") from None
        except OSError as exc:
            raise self._step_error(what, str(exc)) from None

    def _step_error(self, what: str, reason: str) -> BrokerError:
        return BrokerError(
            f"{what} failed for {self.name} ({reason}); "
            f"last lines of its log:\n{log_tail(self.log_path)}"
        )

    def _poll_until(self, ready: Callable[[float], bool], port: int, deadline: float) -> None:
        """Call `ready` (with the seconds left) until it answers True, a short pause
        between calls; `BrokerError` where the server exits first or `deadline` (on
        the monotonic clock) passes."""
        while True:
            self._check_alive()
            self._check_deadline(deadline, port)
            if ready(deadline - time.monotonic()):
                return
            time.sleep(_READY_POLL_INTERVAL_S)

    def _check_alive(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            raise BrokerError(
                f"{self.name} exited with code {code} during start-up; "
                f"last lines of its log:\n{log_tail(self.log_path)}"
            )

    def _check_deadline(self, deadline: float, port: int) -> None:
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"{self.name} did not answer on {LOOPBACK}:{port} within "
                f"{self._start_timeout_s:.0f} s; last lines of its log:\n{log_tail(self.log_path)}"
            )


class EmbeddedBroker(LoopbackProcess):
    """A single-node Kafka-compatible broker run as a child process on loopback.

    Use as a context manager (`with TansuBroker() as broker: broker.bootstrap_servers`)
    or call `start()` and `stop()` (see `LoopbackProcess`).
    """

    kind: ClassVar[str]
    """Short name used in messages and by the test fixture: "tansu", "apache-kafka"."""

    @property
    def name(self) -> str:
        return f"the {self.kind} broker"

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for clients' `bootstrap.servers`; only while the broker runs."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def client_properties(self) -> dict[str, str]:
        """What a client needs besides `bootstrap.servers` (a login, where one is required)."""
        return {}

    def _wait_until_ready(self, port: int) -> None:
        """Block until the broker lists itself in a metadata response."""
        deadline = time.monotonic() + self._start_timeout_s
        # Wait for the listening socket first: librdkafka would log every refused
        # connection of a booting broker to stderr.
        self._poll_until(lambda _remaining: _accepts_connections(port), port, deadline)
        admin = AdminClient({**self.client_properties, "bootstrap.servers": f"{LOOPBACK}:{port}"})
        self._poll_until(lambda remaining: _lists_a_broker(admin, remaining), port, deadline)


def _lists_a_broker(admin: AdminClient, remaining_s: float) -> bool:
    try:
        metadata = admin.list_topics(timeout=max(0.1, min(_METADATA_TIMEOUT_S, remaining_s)))
    except KafkaException:
        return False  # not ready yet (e.g. the KRaft broker is still fenced)
    return bool(metadata.brokers)


def _accepts_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((LOOPBACK, port)) == 0


def environment_without(names: Sequence[str]) -> dict[str, str]:
    """This process's environment minus `names`, for children that read settings from it."""
    return {key: value for key, value in os.environ.items() if key not in names}
