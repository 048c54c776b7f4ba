"""A model per topic without a broker: which model each topic gets, each loaded once, batches
that never mix models, fair turns on the inference thread, and start-up errors naming both."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from config.settings import Settings
from tests.integration.harness import make_settings
from tests.unit.test_loop import loop
from worker import cli
from worker.errors import ModelError
from worker.inference import Completed, InferenceRunner
from worker.metrics import Metrics
from worker.models import Models
from worker.nli.base import EncodedEvent, Task
from worker.nli.fake import FakeClassifier

TASK = Task(("a", "b"), "It is {}.", multi_label=False)
WAIT_S = 10.0


class Loader:
    """A classifier loader of fakes that records each load; names in `broken` fail."""

    def __init__(self, *broken: str, delay_s: float = 0.0) -> None:
        self.broken = set(broken)
        self.delay_s = delay_s
        self.loads: list[tuple[str, str, str, int | None]] = []
        self.loaded: dict[str, FakeClassifier] = {}

    def __call__(
        self, name: str, device: str, dtype: str, max_batch_tokens: int | None
    ) -> FakeClassifier:
        self.loads.append((name, device, dtype, max_batch_tokens))
        if name in self.broken:
            raise ModelError(f"cannot load model {name!r}: no such directory")
        self.loaded[name] = FakeClassifier(name, delay_s=self.delay_s)
        return self.loaded[name]


def topic(name: str, model: Any = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"input": name, "output": f"{name}.out", "labels": ["a", "b"]}
    if model is not None:
        entry["model"] = model
    return entry


def settings_of(*topics: dict[str, Any], **overrides: Any) -> Settings:
    return make_settings("stub:9092", "stub-group", list(topics), **overrides)


def test_topics_with_the_same_model_share_one_load_and_each_model_loads_once_in_order() -> None:
    settings = settings_of(
        topic("posts"),
        topic("mail", "dir/spam"),
        topic("news"),
        topic("chat", {"name": "dir/spam"}),
        model={"name": "dir/base", "device": "cpu", "dtype": "float32"},
        batching={"max_tokens": 4096},
    )
    loader = Loader()
    models = Models.load(settings, loader, 4096)
    # device and dtype left out are the top-level model's.
    assert loader.loads == [
        ("dir/base", "cpu", "float32", 4096),
        ("dir/spam", "cpu", "float32", 4096),
    ]
    assert models.names == ["dir/base", "dir/spam"]
    assert [models.name_of(t) for t in ("posts", "mail", "news", "chat")] == [
        "dir/base",
        "dir/spam",
        "dir/base",
        "dir/spam",
    ]
    assert models.of_topic("chat") is models.of_topic("mail") is loader.loaded["dir/spam"]


def test_the_given_top_level_classifier_serves_topics_without_a_model_and_those_naming_it() -> None:
    settings = settings_of(
        topic("posts"),
        topic("mail", "fake-nli"),
        topic("news", "dir/other"),
        topic("chat", "dir/base"),
        model={"name": "dir/base"},
    )
    given = FakeClassifier()
    loader = Loader()
    models = Models.load(settings, loader, None, given)
    assert [load[0] for load in loader.loads] == ["dir/other"]
    assert models.of_topic("posts") is models.of_topic("mail") is models.of_topic("chat") is given
    assert models.names == ["fake-nli", "dir/other"]


def test_a_top_level_model_no_topic_uses_is_neither_loaded_nor_served() -> None:
    settings = settings_of(topic("posts", "dir/a"), topic("mail", "dir/b"))
    loader = Loader()
    assert Models.load(settings, loader, None).names == ["dir/a", "dir/b"]
    assert Models.load(settings, loader, None, FakeClassifier()).names == ["dir/a", "dir/b"]
    assert [load[0] for load in loader.loads] == ["dir/a", "dir/b"] * 2


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("dir/spam", "topics.1.model (topic 'mail'): model 'dir/spam' failed to load: "),
        ("dir/base", "model (topic 'posts'): model 'dir/base' failed to load: "),
    ],
)
def test_a_model_that_fails_to_load_is_named_with_the_key_and_topic_that_ask_for_it(
    broken: str, message: str
) -> None:
    settings = settings_of(topic("posts"), topic("mail", "dir/spam"), model={"name": "dir/base"})
    with pytest.raises(ModelError) as caught:
        Models.load(settings, Loader(broken), None)
    assert str(caught.value).startswith(message)
    assert str(caught.value).endswith("no such directory")


def test_run_stops_at_start_up_naming_the_topic_and_the_model_that_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    topics = [topic("posts"), topic("mail", {"name": "dir/spam", "device": "cpu"})]
    config.write_text(yaml.safe_dump({"metrics_port": 0, "topics": topics}))
    loader = Loader("dir/spam")
    code = cli.main(["run", "--config", str(config), "--model", "dir/base"], loader)
    assert code == cli.EXIT_MODEL
    err = capsys.readouterr().err
    assert "topics.1.model (topic 'mail'): model 'dir/spam' failed to load" in err
    assert "Traceback" not in err
    assert [load[:2] for load in loader.loads] == [("dir/base", "auto"), ("dir/spam", "cpu")]


def test_models_refuse_a_topic_naming_a_model_that_is_not_loaded() -> None:
    with pytest.raises(ValueError, match="dir/b"):
        Models({"dir/a": FakeClassifier("dir/a")}, {"posts": "dir/b"})


def runner_of(models: Models) -> InferenceRunner[str]:
    def encoded(text: str) -> EncodedEvent:
        # Whichever model scores it, the fake's encoding is the same.
        return FakeClassifier().encode(text, TASK)

    runner: InferenceRunner[str] = InferenceRunner(models, encoded)
    runner.start()
    return runner


def last_parts(runner: InferenceRunner[str], batches: int) -> list[Completed[str]]:
    done: list[Completed[str]] = []
    while len(done) < batches:
        got = runner.completed(timeout=WAIT_S)
        assert got, "no part came back in time"
        done += [part for part in got if part.last]
    return done


def test_each_batch_is_scored_by_its_own_model_and_says_which() -> None:
    big, small = FakeClassifier("big"), FakeClassifier("small")
    runner = runner_of(Models({"big": big, "small": small}, {}))
    runner.submit(["one", "two", "three"], "big")
    runner.submit(["four"], "small")
    done = last_parts(runner, 2)
    runner.stop(WAIT_S)
    assert sorted((part.model, len(part.items)) for part in done) == [("big", 3), ("small", 1)]
    assert big.batch_sizes == [3] and small.batch_sizes == [1]


def test_a_busy_model_delays_another_by_at_most_one_of_its_batches() -> None:
    big, small = FakeClassifier("big", delay_s=0.05), FakeClassifier("small", delay_s=0.05)
    runner = runner_of(Models({"big": big, "small": small}, {}))
    for n in range(6):
        runner.submit([f"big {n}"], "big")
    runner.submit(["small"], "small")
    order = [part.model for part in last_parts(runner, 7)]
    runner.stop(WAIT_S)
    # The big model's first batch may be on the thread already when the small one comes.
    assert order.index("small") <= 1, order
    assert Counter(order) == {"big": 6, "small": 1}


def test_a_worker_with_two_models_keeps_each_topics_batches_on_its_model() -> None:
    posts, mail = "posts", "mail"
    settings = settings_of(
        topic(posts),
        topic(mail, "fake-spam"),
        batching={"max_events": 4, "max_wait_ms": 5},
        shutdown_timeout_s=5,
    )
    texts = [orjson.dumps({"text": f"event {i}" + " more" * (i % 3)}) for i in range(10)]
    logs = {(posts, 0): texts, (mail, 0): texts[:6]}
    base = FakeClassifier("fake-base")
    models = Models.load(settings, Loader(), None, base)
    spam = models.of_topic(mail)
    assert isinstance(spam, FakeClassifier)
    with loop(settings, logs, models) as running:
        running.stub.rebalance("assign", list(logs))
        running.wait_until(running.all_committed, "everything committed")
        outputs = [
            (topic_name, orjson.loads(value)["classification"])
            for topic_name, value in running.producer.sent
            if value is not None
        ]
        registry = running.worker.metrics.registry
    got = Counter((name, result["model"]) for name, result in outputs)
    assert got == {("posts.out", "fake-base"): 10, ("mail.out", "fake-spam"): 6}
    # Batches never mix models: each fake saw its own topic's events only.
    assert sum(base.batch_sizes) == 10 and sum(spam.batch_sizes) == 6
    for model, events in (("fake-base", 10), ("fake-spam", 6)):
        assert registry.get_sample_value("zsc_batch_size_sum", {"model": model}) == events
        assert registry.get_sample_value("zsc_inference_seconds_count", {"model": model})
        assert registry.get_sample_value("zsc_queue_wait_seconds_count", {"model": model}) == (
            events
        )
        info = {"model": model, "architecture": "fake", "device": "none"}
        assert registry.get_sample_value("zsc_model_info", info) == 1


def test_each_model_served_has_its_info_and_per_batch_series_from_the_start() -> None:
    metrics = Metrics()
    metrics.model_served({"model": "dir/a", "device": "cpu"})
    metrics.model_served({"model": "dir/b", "device": "cuda:0"})
    registry = metrics.registry
    assert registry.get_sample_value("zsc_model_info", {"model": "dir/b", "device": "cuda:0"}) == 1
    for name in ("zsc_batch_size_count", "zsc_inference_seconds_count"):
        assert registry.get_sample_value(name, {"model": "dir/a"}) == 0
    assert registry.get_sample_value("zsc_inference_failures_total", {"model": "dir/b"}) == 0


def test_calibrate_scores_a_topic_with_its_own_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"topics": [topic("posts"), topic("mail", "dir/spam")]}))
    data = tmp_path / "labelled.jsonl"
    lines = [orjson.dumps({"text": f"text number {i}", "label": "ab"[i % 2]}) for i in range(20)]
    data.write_bytes(b"\n".join(lines))
    loader = Loader()
    argv = ["calibrate", "--config", str(config), "--topic", "mail", "--data", str(data)]
    assert cli.main(argv, loader) == 0, capsys.readouterr().err
    assert [load[0] for load in loader.loads] == ["dir/spam"]
