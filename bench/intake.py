"""The cost of taking records one poll at a time, beside consume(n), in one run.

The worker polls one record at a time so that no record fetched before a
rebalance callback is taken for one of the new assignment (worker.app). This
measures what that costs on the polling thread: the same topic read to its end
by a consumer of the worker's properties, once with consume(500) and once with
poll(), alternating, several rounds.

    python -m bench.intake [--records 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.e2e import running_broker

BATCH = 500
VALUE = b'{"id": 1, "text": "' + b"a typical short event text " * 4 + b'"}'


def fill(bootstrap: str, topic: str, records: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for _ in range(records):
        while True:
            try:
                producer.produce(topic, VALUE)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


def read(bootstrap: str, topic: str, records: int, batched: bool) -> float:
    """Seconds to take every record of the topic, from a fresh group."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"intake-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.offset.store": False,
            "queued.max.messages.kbytes": 16_384,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    started = None
    while seen < records:
        if batched:
            got = len(consumer.consume(BATCH, 0.02))
        else:
            got = 0
            timeout = 0.02
            for _ in range(BATCH):
                if consumer.poll(timeout) is None:
                    break
                got += 1
                timeout = 0.0
        if got and started is None:
            started = time.perf_counter()
        seen += got
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with running_broker() as broker:
        topic = f"intake-{uuid.uuid4().hex[:8]}"
        fill(broker.bootstrap_servers, topic, args.records)
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for batched in (True, False):
                times[batched].append(read(broker.bootstrap_servers, topic, args.records, batched))
    for batched, label in ((True, f"consume({BATCH})"), (False, "poll() per record")):
        median = statistics.median(times[batched])
        rate = args.records / median
        print(f"{label:20} {rate:>10,.0f} records/s  ({median * 1e6 / args.records:.2f} µs each)")
    ratio = statistics.median(times[False]) / statistics.median(times[True])
    print(f"poll / consume time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
