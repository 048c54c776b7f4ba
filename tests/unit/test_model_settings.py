"""A topic's `model`: shorthand or mapping, what it inherits from the top-level model, and the
configurations refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from config.errors import ConfigError
from config.model_settings import ModelSettings
from config.settings import load_settings

TOP_LEVEL = {"name": "dir/base", "device": "cpu", "dtype": "bfloat16"}


def settings_file(tmp_path: Path, topics: list[dict[str, Any]], **top: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"topics": topics, **top}))
    return path


def entry(name: str, **keys: Any) -> dict[str, Any]:
    return {"input": name, "output": f"{name}.out", "labels": ["a"], **keys}


def test_a_topic_without_a_model_gets_the_top_level_one_and_its_own_keys_win(
    tmp_path: Path,
) -> None:
    topics = [
        entry("posts"),
        entry("mail", model="dir/spam"),
        entry("news", model={"name": "dir/news", "dtype": "float32"}),
        entry("chat", model={"name": "dir/chat", "device": "cuda:1", "dtype": "float16"}),
    ]
    settings = load_settings(settings_file(tmp_path, topics, model=TOP_LEVEL))
    assert [settings.model_of(t) for t in settings.topics] == [
        ModelSettings(**TOP_LEVEL),
        ModelSettings(name="dir/spam", device="cpu", dtype="bfloat16"),
        ModelSettings(name="dir/news", device="cpu", dtype="float32"),
        ModelSettings(name="dir/chat", device="cuda:1", dtype="float16"),
    ]


def test_what_a_topic_inherits_follows_the_environment_and_flags_of_the_top_level_model(
    tmp_path: Path,
) -> None:
    path = settings_file(tmp_path, [entry("posts"), entry("mail", model="dir/spam")])
    settings = load_settings(path, {"model.name": "dir/flag"}, {"ZSC_DTYPE": "int8"})
    assert [settings.model_of(t) for t in settings.topics] == [
        ModelSettings(name="dir/flag", device="auto", dtype="int8"),
        ModelSettings(name="dir/spam", device="auto", dtype="int8"),
    ]


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ({"name": "dir/m", "device": "gpu"}, "topics.1.model.device: Value error, must be auto"),
        ({"name": "dir/m", "dtype": "int4"}, "topics.1.model.dtype: Input should be"),
        ({"device": "cpu"}, "topics.1.model.name: Field required"),
        ({"name": ""}, "topics.1.model.name: String should have at least 1 character"),
        ({"name": "dir/m", "colour": "red"}, "topics.1.model.colour: Extra inputs"),
        (
            {"name": "dir/base", "dtype": "float32"},
            "topics.1.model: model 'dir/base' runs with device cpu, dtype bfloat16 for topics.0",
        ),
    ],
)
def test_a_bad_topic_model_stops_start_up_naming_the_key(
    tmp_path: Path, model: dict[str, Any], reason: str
) -> None:
    path = settings_file(tmp_path, [entry("posts"), entry("mail", model=model)], model=TOP_LEVEL)
    with pytest.raises(ConfigError, match="invalid configuration") as caught:
        load_settings(path)
    assert reason in str(caught.value)
