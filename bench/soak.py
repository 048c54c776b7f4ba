"""The soak: three workers at a fixed rate on a three-node cluster, with faults, for a long time.

    python -m bench.soak --minutes 30 --out DIR

Every `--fault-every` minutes one worker is killed (SIGKILL) or stopped
(SIGTERM), alternately, and restarted at once; every `--broker-every` minutes
one broker is killed and restarted. Worker A is never faulted, so its RSS over
the whole run shows a leak; B and C take the worker faults in turn. The report
gives each worker's RSS slope (MB/h, least squares over samples after the
warm-up, per life of the process), the catch-up after each fault (how long
until every event produced before it has its output), and lost and duplicated
events (duplicates are expected under at-least-once, never under exactly-once).
The workers run the fake model: the soak is about delivery and memory, not
the model's speed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.brokers.cluster import NODES, KafkaCluster
from tests.integration.faults.support import (
    EventStream,
    Tally,
    WorkerProcess,
    output_ends,
    topics_config,
    write_config,
)
from tests.integration.harness import committed
from worker.kafka.admin import ensure_topics

PARTITIONS = 6
GROUP = "soak"
# Samples of each worker's RSS: often enough for a slope, rarely enough to cost nothing.
SAMPLE_EVERY_S = 10.0
# RSS grows while imports finish and buffers fill: the slope starts after this.
WARM_UP_S = 120.0
# How long a fault's catch-up may take before the soak calls it a stall.
CATCH_UP_LIMIT_S = 120.0
# At a stall, the report lists this many of the events without output.
MISSING_SHOWN = 10
SHUTDOWN_TIMEOUT_S = 10.0
KILLED_BROKER_FOR_S = 12.0
PAGE_BYTES = 4096


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB, None once it is gone."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * PAGE_BYTES / 2**20


def slope_mb_per_hour(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per hour; None with too few."""
    if len(samples) < 3:
        return None
    times = [t for t, _ in samples]
    values = [v for _, v in samples]
    return statistics.linear_regression(times, values).slope * 3600


@dataclass
class Life:
    """One process of a worker, from start to fault (or the end), and its RSS samples."""

    started: float
    samples: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Soaked:
    """A worker of the soak: its process and the lives it had."""

    name: str
    process: WorkerProcess
    lives: list[Life] = field(default_factory=list)

    def start(self) -> None:
        self.process.start()
        self.lives.append(Life(time.monotonic()))

    def sample(self, now: float) -> None:
        life = self.lives[-1]
        pid = self.process.pid
        if pid is not None and now - life.started >= WARM_UP_S and (mb := rss_mb(pid)):
            life.samples.append((now - life.started, mb))


@dataclass
class Outputs:
    """What the soak reads back: the tally of outputs, and where to look when they stall."""

    tally: Tally
    bootstrap_servers: str
    source: str
    sink: str
    group: str
    stalls: list[str] = field(default_factory=list)

    def catch_up(self, produced: int, since: float, fault: str) -> float:
        """Seconds from `since` until every event below `produced` has a record out.

        A catch-up that hits the limit is a stall: note which events are missing and
        where the group's commits and the outputs' last stable offsets stand."""
        self.tally.wait_for(range(produced), CATCH_UP_LIMIT_S, settle_s=0.0)
        seconds = time.monotonic() - since
        if missing := self.tally.missing(range(produced)):
            shown = sorted(missing)[:MISSING_SHOWN]
            self.stalls.append(
                f"after {fault}: {len(missing)} events without output (first {shown}); "
                f"committed offsets of {self.source}: "
                f"{committed(self.bootstrap_servers, self.group, self.source, PARTITIONS)}; "
                f"{output_ends(self.bootstrap_servers, self.sink, PARTITIONS)}"
            )
        return seconds


def soak(args: argparse.Namespace, directory: Path) -> list[str]:
    """Run the soak; return the report's lines."""
    lines = [f"# Soak: {args.minutes} min, {args.rate} events/s, {args.guarantee}", ""]
    faults: list[str] = []
    with KafkaCluster() as cluster:
        source, sink, dlq = (f"soak.{name}" for name in ("in", "out", "dlq"))
        ensure_topics(cluster.bootstrap_servers, [source, sink, dlq], PARTITIONS, replication=NODES)
        config = write_config(
            directory,
            cluster.bootstrap_servers,
            GROUP,
            topics_config(source, sink, dlq),
            session_timeout_ms=None,
            processing_guarantee=args.guarantee,
            shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
        )
        workers = [
            Soaked(name, WorkerProcess(config, directory / f"worker-{name}.log")) for name in "ABC"
        ]
        total = int(args.rate * args.minutes * 60)
        stream = EventStream(cluster.bootstrap_servers, source, total, args.rate)
        with (
            Tally(cluster.bootstrap_servers, [sink, dlq]) as tally,
            contextlib.ExitStack() as stack,
        ):
            outputs = Outputs(tally, cluster.bootstrap_servers, source, sink, GROUP)
            for worker in workers:
                stack.callback(worker.process.close)
                worker.start()
            stream.start()
            started = time.monotonic()
            end = started + args.minutes * 60
            next_fault = started + args.fault_every * 60
            next_broker = started + args.broker_every * 60
            faults_done = 0
            while (now := time.monotonic()) < end:
                for worker in workers:
                    worker.sample(now)
                if now >= next_broker:
                    next_broker += args.broker_every * 60
                    node = cluster.busiest_node([source, sink])
                    produced = stream.produced
                    cluster.kill(node)
                    time.sleep(KILLED_BROKER_FOR_S)
                    cluster.restart(node)
                    cluster.wait_until_replicated()
                    fault = f"broker {node} killed 12 s"
                    seconds = outputs.catch_up(produced, time.monotonic(), fault)
                    faults.append(f"| {now - started:.0f} | {fault} | {seconds:.1f} |")
                elif now >= next_fault:
                    next_fault += args.fault_every * 60
                    worker = workers[1 + faults_done % 2]
                    how = "SIGKILL" if faults_done % 4 < 2 else "SIGTERM"
                    faults_done += 1
                    produced = stream.produced
                    if how == "SIGKILL":
                        worker.process.kill()
                    else:
                        worker.process.terminate(SHUTDOWN_TIMEOUT_S + 10)
                    worker.start()
                    fault = f"{how} {worker.name}, restart"
                    seconds = outputs.catch_up(produced, time.monotonic(), fault)
                    faults.append(f"| {now - started:.0f} | {fault} | {seconds:.1f} |")
                time.sleep(SAMPLE_EVERY_S)
            produced = stream.stop()
            outputs.catch_up(produced, time.monotonic(), "the end of the stream")
            time.sleep(3)
            lost = len(tally.missing(range(produced)))
            duplicates = tally.duplicates()
            alive = [w.name for w in workers if w.process.alive]
    lines += [
        f"events: {produced}, lost: {lost}, duplicates: {duplicates}, workers alive at the end: "
        f"{', '.join(alive)}",
        "",
        "| worker | lives | RSS slope per life (MB/h) | last RSS (MB) |",
        "|---|---:|---|---:|",
    ]
    for worker in workers:
        slopes = [slope_mb_per_hour(life.samples) for life in worker.lives]
        shown = ", ".join(f"{s:+.1f}" for s in slopes if s is not None) or "too short"
        last = next((life.samples[-1][1] for life in reversed(worker.lives) if life.samples), 0.0)
        lines.append(f"| {worker.name} | {len(worker.lives)} | {shown} | {last:.0f} |")
    lines += ["", "| at (s) | fault | catch-up (s) |", "|---:|---|---:|", *faults]
    if outputs.stalls:
        lines += ["", "Stalls:", *(f"- {stall}" for stall in outputs.stalls)]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print (and with --out, save) its report."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=50.0, help="events per second")
    parser.add_argument(
        "--fault-every", type=float, default=3.0, help="minutes between worker faults"
    )
    parser.add_argument(
        "--broker-every", type=float, default=10.0, help="minutes between broker restarts"
    )
    parser.add_argument(
        "--guarantee", choices=["at-least-once", "exactly-once"], default="exactly-once"
    )
    parser.add_argument("--out", type=Path, help="directory for the report and the logs")
    args = parser.parse_args(argv)
    directory = args.out or Path(tempfile.mkdtemp(prefix="zsc-soak-"))
    directory.mkdir(parents=True, exist_ok=True)
    report = "\n".join(soak(args, directory))
    (directory / "soak.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
