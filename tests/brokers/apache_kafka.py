"""Apache Kafka itself, from Maven Central: CI's reference broker where there is no Docker.

The broker is the artifact `org.apache.kafka:kafka_2.13` with its runtime
dependencies, resolved once by `mvn dependency:copy-dependencies` of the small
POM beside this module into a cache directory outside the repository:
`$ZSC_KAFKA_CACHE/kafka-<version>/libs` (default `~/.cache/zsc-worker/...`,
honouring `$XDG_CACHE_HOME`). A marker file holding the POM's hash makes later
runs skip Maven; changing the POM fetches again.

Each `ApacheKafkaBroker` is one KRaft node (broker and controller in one JVM)
on free loopback ports, with its data and log in a temporary directory.

CI fetches the jars in a step of its own, so the download is visible and
happens once: `python -m tests.brokers.apache_kafka fetch`.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import importlib.resources
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.brokers.tls import Certificates, ssl_properties
from worker.embedded.base import LOOPBACK, EmbeddedBroker, Launch, free_loopback_ports, log_tail
from worker.errors import BrokerError

CACHE_ENV = "ZSC_KAFKA_CACHE"
"""Overrides the cache root; the jars go to `$ZSC_KAFKA_CACHE/kafka-<version>/libs`."""

MIN_JAVA_MAJOR = 17
"""Kafka 4.x brokers need Java 17 or newer."""

MAVEN_TIMEOUT_S = 900.0
"""About 45 MB from Maven Central; generous so a slow mirror fails loudly rather than hangs."""

FORMAT_TIMEOUT_S = 120.0
START_TIMEOUT_S = 120.0
"""A cold JVM on two busy CI cores takes several seconds; the margin avoids flaky sessions."""

STOP_TIMEOUT_S = 30.0
"""A single KRaft node shuts down in a few seconds; past this it is killed."""

DEFAULT_JVM_OPTIONS: tuple[str, ...] = (
    # The tests' traffic fits easily; Kafka's own default (1 GiB) is more than a
    # CI runner that also holds a model should give a test broker.
    "-Xmx512m",
    # Fewer GC threads than G1 on small CI machines, and pauses on a heap this
    # small are a few milliseconds.
    "-XX:+UseSerialGC",
    "-Djava.awt.headless=true",
    # slf4j-simple (see pom.xml) writes to stderr, which goes to server.log;
    # timestamps make a failed start readable.
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
)

FORMAT_JVM_OPTIONS: tuple[str, ...] = (
    # Formatting is a one-second JVM run: the C1 compiler alone starts it faster,
    # and no code there runs long enough for C2 to pay off. (The server keeps
    # C2: it is the broker for benchmarks too.)
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",
)

_POM = "pom.xml"
_KEYSTORE = "keystore.pem"
_MARKER = ".zsc-fetched"
_MAVEN_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_NODE_ID = 1
_JAVA_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?')


@functools.cache
def kafka_version() -> str:
    """The Kafka version the POM pins (`kafka.version`): the single source of truth."""
    root = ET.fromstring(_pom_text())
    version = root.findtext("m:properties/m:kafka.version", namespaces=_MAVEN_NS)
    if not version:
        raise BrokerError(f"{_POM} of tests.brokers has no <kafka.version> property")
    return version.strip()


def cache_root() -> Path:
    """Where fetched brokers are kept: `$ZSC_KAFKA_CACHE`, else the user cache directory."""
    if override := os.environ.get(CACHE_ENV):
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zsc-worker"


def libs_dir() -> Path:
    """The directory holding the broker's jars (fetched or not)."""
    return cache_root() / f"kafka-{kafka_version()}" / "libs"


def is_fetched() -> bool:
    """Whether the jars of this POM are in the cache (no Maven needed)."""
    marker = libs_dir() / _MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8").strip() == _pom_digest()


def fetch(force: bool = False) -> Path:
    """Resolve the broker's jars from Maven Central into the cache, once; return their directory.

    Safe to call from several processes at once: a file lock serializes them
    and the jars appear under their final name only when complete.
    """
    try:
        return _fetch_once(force)
    except OSError as exc:  # an unwritable cache, a broken mvn
        raise BrokerError(f"cannot fetch Apache Kafka into {cache_root()}: {exc}") from None


def _fetch_once(force: bool) -> Path:
    import fcntl  # POSIX only; imported here so Tansu still works where it is missing

    target = libs_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_fetched() and not force:
            return target
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                f"cannot fetch Apache Kafka {kafka_version()}: `mvn` is not on the PATH"
            )
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
            pom = Path(scratch) / _POM
            pom.write_text(_pom_text(), encoding="utf-8")
            staged = Path(scratch) / "libs"
            command = [
                mvn,
                "--batch-mode",  # no interactive prompts, no colour codes in captured output
                "--quiet",
                "--file",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staged}",
                # The broker's server modules are runtime-scoped dependencies of kafka_2.13.
                "-DincludeScope=runtime",
            ]
            try:
                subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=MAVEN_TIMEOUT_S,
                    check=True,
                )
            except subprocess.CalledProcessError as exc:
                output = "\n".join((exc.stdout + exc.stderr).splitlines()[-40:])
                raise BrokerError(
                    f"mvn could not fetch Apache Kafka {kafka_version()} "
                    f"(exit {exc.returncode}):\n{output}"
                ) from None
            except subprocess.TimeoutExpired:
                raise BrokerError(
                    f"mvn did not fetch Apache Kafka {kafka_version()} "
                    f"within {MAVEN_TIMEOUT_S:.0f} s"
                ) from None
            if not (staged / f"kafka_2.13-{kafka_version()}.jar").is_file():
                raise BrokerError(f"mvn finished but {staged} holds no kafka_2.13 jar")
            (staged / _MARKER).write_text(_pom_digest() + "\n", encoding="utf-8")
            shutil.rmtree(target, ignore_errors=True)
            staged.rename(target)
    return target


@functools.cache
def java_executable() -> str | None:
    """`$JAVA_HOME/bin/java` when set (as Kafka's scripts do), else `java` on the PATH."""
    if java_home := os.environ.get("JAVA_HOME"):
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("java")


@functools.cache
def java_major_version() -> int | None:
    """The major version of `java_executable()` (8 for "1.8.0_x"), or None without Java."""
    java = java_executable()
    if java is None:
        return None
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _JAVA_VERSION_RE.search(result.stderr + result.stdout)
    if match is None:
        return None
    major, minor = int(match.group(1)), match.group(2)
    return int(minor) if major == 1 and minor else major


def can_run() -> bool:
    """Whether this machine can run the broker: Java 17+, and the jars cached or `mvn`."""
    java = java_major_version()
    return (
        java is not None
        and java >= MIN_JAVA_MAJOR
        and (is_fetched() or shutil.which("mvn") is not None)
    )


@dataclass(frozen=True, slots=True)
class TlsListeners:
    """What a broker's TLS listeners present and trust, and where SASL_SSL listens."""

    keystore: Path
    """PEM: the broker's private key (PKCS#8, unencrypted) and its certificate chain."""
    truststore: Path
    """PEM: the CA certificates that clients' certificates must chain to."""
    sasl_ssl_port: int | None = None
    """The SASL_SSL listener's port; it opens only with SASL users."""


def server_properties(
    *,
    port: int,
    controller_port: int,
    log_dir: Path,
    overrides: dict[str, str] | None = None,
    sasl_users: Mapping[str, str] | None = None,
    tls: TlsListeners | None = None,
    node_id: int = _NODE_ID,
    quorum_voters: str | None = None,
) -> dict[str, str]:
    """The configuration of a single-node KRaft cluster on loopback, for tests and development.

    With `sasl_users` (user -> password; the first is the broker's own) the
    client listener takes SASL/PLAIN over plaintext instead of anonymous clients.
    With `tls` it takes TLS instead, with client certificates required; with
    `sasl_users` too, a second listener takes SASL/PLAIN over TLS. A node of a
    larger cluster passes its `node_id` and the `quorum_voters` of all nodes
    (`id@host:controller_port,...`); its replication settings go in `overrides`.
    """
    properties = {
        # One JVM is the whole cluster: broker and its own KRaft controller.
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        # A static quorum (of this node alone by default); with voters set,
        # formatting needs no --standalone / --initial-controllers.
        "controller.quorum.voters": quorum_voters or f"{node_id}@{LOOPBACK}:{controller_port}",
        # Loopback only: the broker must not be reachable from other hosts.
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        # Clients reconnect to the advertised address; the default is the host name.
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        # The internal topics default to 3 replicas, which one node cannot host:
        # group offset commits and transactions would fail.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # 50 partitions each by default: created on the first group or transaction,
        # they slow that first use by seconds and spread nothing on one node.
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.num.partitions": "1",
        # The first rebalance of a new group otherwise waits 3 s for more members;
        # every test uses a fresh group.
        "group.initial.rebalance.delay.ms": "0",
        # The default, stated because tests rely on auto-created topics having one partition.
        "num.partitions": "1",
    }
    if tls is not None:
        properties.update(_tls_listeners(port, controller_port, tls, sasl_users or {}))
    elif sasl_users:
        properties.update(_sasl_plain_listener(port, controller_port, sasl_users))
    properties.update(overrides or {})
    return properties


def _sasl_plain_listener(
    port: int, controller_port: int, users: Mapping[str, str]
) -> dict[str, str]:
    """The client (and inter-broker) listener behind SASL/PLAIN; the controller's stays plain."""
    return {
        "listeners": f"SASL_PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"SASL_PLAINTEXT://{LOOPBACK}:{port}",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN",
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": _plain_jaas(users),
    }


def _tls_listeners(
    port: int, controller_port: int, tls: TlsListeners, users: Mapping[str, str]
) -> dict[str, str]:
    """Mutual TLS on the client (and inter-broker) listener, SASL_SSL beside it with users;
    the controller's listener stays plain on loopback."""
    clients = [f"SSL://{LOOPBACK}:{port}"]
    if users and tls.sasl_ssl_port is not None:
        clients.append(f"SASL_SSL://{LOOPBACK}:{tls.sasl_ssl_port}")
    properties = {
        "listeners": ",".join([*clients, f"CONTROLLER://{LOOPBACK}:{controller_port}"]),
        "advertised.listeners": ",".join(clients),
        # The broker is a client of its own SSL listener too (transaction
        # markers): its certificate serves for both ends.
        "inter.broker.listener.name": "SSL",
        "listener.security.protocol.map": "SSL:SSL,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        # PEM files rather than JKS or PKCS#12 stores: no keytool step. The key
        # is unencrypted, so no ssl.key.password: Kafka refuses the keystore
        # with one ("Invalid PEM keystore configs"), and Java 17 cannot open an
        # encrypted PKCS#8 key as OpenSSL or `cryptography` write it ("PBES2
        # SecretKeyFactory not available").
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls.keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.truststore),
        # Mutual TLS on SSL only: SASL_SSL clients log in with a password instead.
        "listener.name.ssl.ssl.client.auth": "required",
    }
    if users and tls.sasl_ssl_port is not None:
        properties |= {
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_ssl.plain.sasl.jaas.config": _plain_jaas(users),
        }
    return properties


def _plain_jaas(users: Mapping[str, str]) -> str:
    """The PLAIN login module's JAAS line: the first user is the broker's own, all may log in."""
    [(broker_user, broker_password), *_] = users.items()
    accounts = " ".join(f'user_{user}="{password}"' for user, password in users.items())
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{broker_user}" password="{broker_password}" {accounts};'
    )


def new_cluster_id() -> str:
    """A random cluster id in Kafka's format (a UUID as 22 characters of URL-safe base64)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")


class ApacheKafkaBroker(EmbeddedBroker):
    """One Apache Kafka KRaft node (broker + controller) on free loopback ports.

    Fetches the jars on first use if they are not cached (this needs `mvn`).

    Usage::

        with ApacheKafkaBroker() as broker:
            producer = Producer({"bootstrap.servers": broker.bootstrap_servers})
    """

    kind = "apache-kafka"

    def __init__(
        self,
        *,
        jvm_options: Sequence[str] = DEFAULT_JVM_OPTIONS,
        overrides: dict[str, str] | None = None,
        sasl_users: Mapping[str, str] | None = None,
        tls: Certificates | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
    ) -> None:
        """`overrides` replaces or adds server.properties entries (see `server_properties`);
        `sasl_users` (user -> password) makes clients log in with SASL/PLAIN; `tls`
        (certificates made by `tests.brokers.tls`) makes clients use mutual TLS, and
        with `sasl_users` opens a SASL_SSL listener too."""
        super().__init__(start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s)
        self._jvm_options = tuple(jvm_options)
        self._overrides = dict(overrides or {})
        self._sasl_users = dict(sasl_users or {})
        self._tls = tls
        self._sasl_ssl_port: int | None = None

    @property
    def client_properties(self) -> dict[str, str]:
        """What a client of `bootstrap_servers` needs besides it: the CA and the client
        certificate of `tls`, else the first SASL user's login."""
        if self._tls is not None:
            return {"security.protocol": "SSL", **ssl_properties(self._tls.ca, self._tls.client)}
        if not self._sasl_users:
            return {}
        [(user, password), *_] = self._sasl_users.items()
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": user,
            "sasl.password": password,
        }

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        """`host:port` of the SASL_SSL listener, which opens with both `tls` and `sasl_users`."""
        if not self.running or self._sasl_ssl_port is None:
            raise BrokerError("no SASL_SSL listener: it needs a running broker, tls and sasl_users")
        return f"{LOOPBACK}:{self._sasl_ssl_port}"

    def _prepare(self, workdir: Path) -> Launch:
        java = java_executable()
        if java is None:
            raise BrokerError("cannot start Apache Kafka: no `java` on the PATH or in JAVA_HOME")
        classpath = str(fetch() / "*")
        port, controller_port, *sasl_ssl = free_loopback_ports(
            3 if self._tls is not None and self._sasl_users else 2
        )
        self._sasl_ssl_port = sasl_ssl[0] if sasl_ssl else None
        config = workdir / "server.properties"
        properties = server_properties(
            port=port,
            controller_port=controller_port,
            log_dir=workdir / "data",
            overrides=self._overrides,
            sasl_users=self._sasl_users,
            tls=self._tls_setup(workdir),
        )
        config.write_text(
            "".join(f"{key}={value}\n" for key, value in properties.items()), encoding="utf-8"
        )
        self._run_step(
            "formatting the KRaft storage",
            [java, *FORMAT_JVM_OPTIONS, "-cp", classpath, "kafka.tools.StorageTool", "format",
             # "=": a random id may start with "-", which would read as an option.
             f"--cluster-id={new_cluster_id()}", "-c", str(config)],
            timeout_s=FORMAT_TIMEOUT_S,
        )  # fmt: skip
        return Launch(
            command=[java, *self._jvm_options, "-cp", classpath, "kafka.Kafka", str(config)],
            port=port,
        )

    def _tls_setup(self, workdir: Path) -> TlsListeners | None:
        """The broker's key and chain in one file, as Kafka's PEM keystore wants them."""
        if self._tls is None:
            return None
        keystore = workdir / _KEYSTORE
        keystore.touch(mode=0o600)  # a private key: readable by this user only
        keystore.write_text(self._tls.broker.keystore_pem(), encoding="ascii")
        return TlsListeners(
            keystore=keystore, truststore=self._tls.ca, sasl_ssl_port=self._sasl_ssl_port
        )


def _pom_text() -> str:
    return importlib.resources.files(__package__).joinpath(_POM).read_text(encoding="utf-8")


def _pom_digest() -> str:
    return hashlib.sha256(_pom_text().encode("utf-8")).hexdigest()


def _directory_size(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.iterdir() if entry.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    """`fetch` the jars once (CI's pre-test step), or `serve` a broker until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.brokers.apache_kafka", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="resolve the broker's jars into the cache")
    fetch_parser.add_argument("--force", action="store_true", help="fetch even if cached")
    commands.add_parser("serve", help="run a broker and print its bootstrap servers")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            cached = is_fetched() and not args.force
            started = time.monotonic()
            libs = fetch(force=args.force)
            jars = sum(1 for _ in libs.glob("*.jar"))
            how = "already cached" if cached else f"fetched in {time.monotonic() - started:.1f} s"
            print(
                f"Apache Kafka {kafka_version()}: {jars} jars, "
                f"{_directory_size(libs) / 2**20:.1f} MiB in {libs} ({how})"
            )
        else:
            # SIGTERM (a supervisor, `kill`) must stop the broker too, not orphan it.
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
            started = time.monotonic()
            with ApacheKafkaBroker() as broker:
                print(
                    f"Apache Kafka {kafka_version()} ready in {time.monotonic() - started:.1f} s: "
                    f"bootstrap.servers={broker.bootstrap_servers} (Ctrl-C stops it)",
                    flush=True,
                )
                try:
                    while broker.running:
                        time.sleep(1)
                except KeyboardInterrupt:
                    pass
                if not broker.running:
                    print(f"the broker exited:\n{log_tail(broker.log_path)}", file=sys.stderr)
                    return 1
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
