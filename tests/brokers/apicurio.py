"""Apicurio Registry, from Maven Central: the schema registry of the tests, CI and the compose file.

It answers Confluent's schema-registry API (and error codes) at
`/apis/ccompat/v7`. Maven Central ships it ready to run, as the artifact
`io.apicurio:apicurio-registry-app:<version>:tar.gz:all` (about 140 MB):
`mvn dependency:unpack` puts it, once, in the same cache as the Kafka jars
(`tests.brokers.apache_kafka.cache_root()`), and a marker file makes later
runs skip Maven. It runs on Java 17 and keeps its schemas in memory: ready in
a few seconds, about 230 MB resident.

`ApicurioRegistry` is one registry on a free loopback port. `pause` and
`resume` stop and continue its process (SIGSTOP, SIGCONT): a registry that no
longer answers, whose schemas are still there when it is back.

CI fetches it in a step of its own: `python -m tests.brokers.apicurio fetch`.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.brokers import apache_kafka
from worker.embedded.base import LOOPBACK, Launch, LoopbackProcess, free_loopback_ports
from worker.errors import BrokerError

VERSION = "2.6.13.Final"
ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:tar.gz:all"
RUNNER_JAR = f"apicurio-registry-app-{VERSION}-runner.jar"
API_PATH = "/apis/ccompat/v7"
"""Where Apicurio answers the Confluent schema-registry API."""

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MAVEN_TIMEOUT_S = 900.0
"""About 140 MB from Maven Central; generous so a slow mirror fails loudly rather than hangs."""
START_TIMEOUT_S = 120.0
"""Ready in about 4 s alone; a cold JVM on two CI cores beside a broker and a model takes longer."""
STOP_TIMEOUT_S = 30.0
READY_REQUEST_TIMEOUT_S = 2.0

JVM_OPTIONS: tuple[str, ...] = (
    # The tests register a handful of schemas; the JVM's default heap is a quarter of RAM.
    "-Xmx512m",
    "-XX:+UseSerialGC",
)

_MARKER = ".zsc-fetched"


def url_at(port: int) -> str:
    """The Confluent-compatible API of a registry on a loopback port."""
    return f"http://{LOOPBACK}:{port}{API_PATH}"


def install_dir() -> Path:
    """Where the registry is unpacked (fetched or not)."""
    return apache_kafka.cache_root() / f"apicurio-registry-{VERSION}"


def is_fetched() -> bool:
    """Whether the registry is in the cache (no Maven needed)."""
    marker = install_dir() / _MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8").strip() == ARTIFACT


def can_run() -> bool:
    """Whether this machine can run the registry: Java 17+, and it is cached or `mvn` is there."""
    java = apache_kafka.java_major_version()
    return (
        java is not None
        and java >= apache_kafka.MIN_JAVA_MAJOR
        and (is_fetched() or shutil.which("mvn") is not None)
    )


def fetch(force: bool = False) -> Path:
    """Unpack the registry from Maven Central into the cache, once; return its directory.

    Safe to call from several processes at once: a file lock serializes them,
    and the directory appears under its final name only when complete.
    """
    import fcntl  # POSIX only, as for the Kafka jars

    target = install_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".fetch-apicurio.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_fetched() and not force:
            return target
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(f"cannot fetch Apicurio Registry {VERSION}: `mvn` is not on the PATH")
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
            staged = Path(scratch) / "apicurio"
            command = [
                mvn,
                "--batch-mode",
                "--quiet",
                f"{DEPENDENCY_PLUGIN}:unpack",
                f"-Dartifact={ARTIFACT}",
                f"-DoutputDirectory={staged}",
                f"-DmarkersDirectory={Path(scratch) / 'markers'}",
            ]
            try:
                subprocess.run(
                    command,
                    cwd=scratch,  # no POM here: the plugin runs without a project
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=MAVEN_TIMEOUT_S,
                    check=True,
                )
            except subprocess.CalledProcessError as exc:
                output = "\n".join((exc.stdout + exc.stderr).splitlines()[-40:])
                raise BrokerError(
                    f"mvn could not fetch Apicurio Registry {VERSION} "
                    f"(exit {exc.returncode}):\n{output}"
                ) from None
            except subprocess.TimeoutExpired:
                raise BrokerError(
                    f"mvn did not fetch Apicurio Registry {VERSION} within {MAVEN_TIMEOUT_S:.0f} s"
                ) from None
            except OSError as exc:
                raise BrokerError(f"cannot run mvn: {exc}") from None
            if not (staged / RUNNER_JAR).is_file():
                raise BrokerError(f"mvn finished but {staged} holds no {RUNNER_JAR}")
            (staged / _MARKER).write_text(ARTIFACT + "\n", encoding="utf-8")
            shutil.rmtree(target, ignore_errors=True)
            staged.rename(target)
    return target


class ApicurioRegistry(LoopbackProcess):
    """One in-memory Apicurio Registry on a free loopback port.

    Usage::

        with ApicurioRegistry() as registry:
            client = SchemaRegistryClient({"url": registry.url})
    """

    def __init__(
        self, start_timeout_s: float = START_TIMEOUT_S, stop_timeout_s: float = STOP_TIMEOUT_S
    ) -> None:
        super().__init__(start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s)

    @property
    def name(self) -> str:
        return "Apicurio Registry"

    @property
    def url(self) -> str:
        """The Confluent-compatible API, for `schema_registry.url`."""
        return url_at(self.port)

    def pause(self) -> None:
        """Stop the registry's process where it is: connections open, nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused registry carry on, its schemas as they were."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def _prepare(self, workdir: Path) -> Launch:
        java = apache_kafka.java_executable()
        if java is None:
            raise BrokerError("cannot start Apicurio Registry: no `java` on the PATH or JAVA_HOME")
        jar = fetch() / RUNNER_JAR
        [port] = free_loopback_ports(1)
        command = [
            java,
            *JVM_OPTIONS,
            # Loopback only: the registry must not be reachable from other hosts.
            f"-Dquarkus.http.host={LOOPBACK}",
            f"-Dquarkus.http.port={port}",
            "-Dquarkus.log.level=WARN",
            "-jar",
            str(jar),
        ]
        return Launch(command=command, port=port)

    def _wait_until_ready(self, port: int) -> None:
        """Block until the registry answers its API."""
        deadline = time.monotonic() + self._start_timeout_s
        self._poll_until(lambda _remaining: _answers(port), port, deadline)


def _answers(port: int) -> bool:
    with (
        contextlib.suppress(urllib.error.URLError, OSError),
        urllib.request.urlopen(
            f"{url_at(port)}/subjects", timeout=READY_REQUEST_TIMEOUT_S
        ) as answer,
    ):
        return bool(answer.status == 200)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """`fetch` the registry once (CI's pre-test step), or `serve` one until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.brokers.apicurio", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="unpack the registry into the cache")
    fetch_parser.add_argument("--force", action="store_true", help="fetch even if cached")
    commands.add_parser("serve", help="run a registry and print its URL")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            cached = is_fetched() and not args.force
            started = time.monotonic()
            directory = fetch(force=args.force)
            how = "already cached" if cached else f"fetched in {time.monotonic() - started:.1f} s"
            print(f"Apicurio Registry {VERSION} in {directory} ({how})")
        else:
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
            with ApicurioRegistry() as registry:
                print(f"Apicurio Registry {VERSION}: {registry.url} (Ctrl-C stops it)", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(1)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
