"""The peers' plumbing without their venvs: the venv key, the runner's protocol, its answers."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from bench.peers import client
from bench.peers.catalog import ORT_FLOAT32, ORT_FLOAT32_BS1, ORT_INT8, PEER_RUNS, PeerRun
from bench.peers.envs import COMPLETE_FILE, ONNXRUNTIME, OPENVINO, PeerEnv, ensure_env, env_key
from bench.peers.exceptions import PeerInstallError, PeerRunError
from bench.peers.session import PeerSession
from bench.report import ScoreMap
from bench.workload import Workload

PINS = ("optimum-onnx[onnxruntime]==0.1.0", "onnxruntime==1.32.0")


def load_runner() -> ModuleType:
    """The runner as a module: it is a standalone script, not part of the package's imports."""
    spec = importlib.util.spec_from_file_location("peer_runner", client.RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_venv_key_follows_the_pins_and_python_only() -> None:
    key = env_key(PINS, "3.11")
    assert key == env_key(reversed(PINS), "3.11")
    assert key == env_key([f"  {PINS[0]}  # why", "", PINS[1]], "3.11")
    assert key != env_key([PINS[0], "onnxruntime==1.31.0"], "3.11")
    assert key != env_key(PINS, "3.12")
    assert ONNXRUNTIME.directory(Path("/c")) != OPENVINO.directory(Path("/c"))
    assert ONNXRUNTIME.directory(Path("/c")).name.startswith("onnxruntime-")


def test_every_peer_pins_exact_versions_and_names_a_row_once() -> None:
    for env in (ONNXRUNTIME, OPENVINO):
        assert all("==" in line for line in env.requirements)
    names = [run.name for run in PEER_RUNS]
    assert len(names) == len(set(names))


def test_a_complete_venv_is_reused_without_building(tmp_path: Path) -> None:
    env = PeerEnv("fake", PINS)
    directory = env.directory(tmp_path)
    directory.mkdir(parents=True)
    (directory / COMPLETE_FILE).write_text("\n".join(PINS))
    assert ensure_env(env, tmp_path) == directory / "bin" / "python"


def pipeline_answer(**changes: object) -> str:
    answer = {
        "seconds": 2.0,
        "cpu_seconds": 3.5,
        "scores": [{"law": 0.25, "food": 0.75}, {"law": 0.5, "food": 0.5}],
        "precision": "bf16 inference",
        "note": "bf16 inference, 2 threads",
        "versions": {"openvino": "2026.4.1"},
    } | changes
    return json.dumps(answer) + "\n"


def test_a_pipeline_answer_is_parsed() -> None:
    answer = client.parse_pipeline_answer(pipeline_answer(), texts=2)
    assert (answer.seconds, answer.cpu_seconds) == (2.0, 3.5)
    assert answer.scores[0] == {"law": 0.25, "food": 0.75}
    assert answer.precision == "bf16 inference"
    assert answer.versions == {"openvino": "2026.4.1"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty answer"),
        ("Device set to use cpu\n", "not JSON"),
        ("[1, 2]\n", "not a JSON object"),
        ('{"error": "ValueError: unknown runtime"}\n', "unknown runtime"),
        (pipeline_answer(seconds="soon"), "malformed answer"),
        (json.dumps({"seconds": 1.0}), "malformed answer"),
        (pipeline_answer(scores=[{"law": 1.0}]), "scores 1 texts, not 2"),
        (pipeline_answer(seconds=0.0), "took 0.0 s"),
    ],
)
def test_a_bad_pipeline_answer_says_why(text: str, reason: str) -> None:
    with pytest.raises(PeerRunError, match=reason):
        client.parse_pipeline_answer(text, texts=2)


def test_a_peak_answer_is_parsed() -> None:
    answer = client.parse_peak_answer('{"ops_per_s": 3.2e11, "note": "MatMulInteger"}')
    assert answer.ops_per_s == 3.2e11
    with pytest.raises(PeerRunError, match="malformed"):
        client.parse_peak_answer('{"note": "no figure"}')


def test_the_pipeline_request_carries_the_workload(tmp_path: Path) -> None:
    load = Workload(texts=("a", "b"), warmup=("w",), source="test", labels=("x", "y"))
    request = client.pipeline_request("openvino", "int8", 16, "/m", tmp_path, load, threads=2)
    assert request["texts"] == ["a", "b"] and request["warmup"] == ["w"]
    assert request["labels"] == ["x", "y"] and request["multi_label"] is True
    assert request["runtime"] == "openvino" and request["variant"] == "int8"
    assert request["batch_size"] == 16
    assert request["threads"] == 2 and request["work_dir"] == str(tmp_path)
    json.dumps(request)


def test_the_runner_answers_a_failure_as_json_on_stdout_only() -> None:
    # Any python runs the runner's protocol: it imports nothing from the project.
    with pytest.raises(PeerRunError, match=r"exit 1: KeyError: 'no such task'"):
        client.call(Path(sys.executable), {"task": "no such task"})


def test_the_runner_picks_the_quantization_recipe_from_the_cpu_flags() -> None:
    runner = load_runner()
    assert runner.int8_recipe({"avx2", "avx512f", "avx512_vnni"}) == "avx512_vnni"
    assert runner.int8_recipe({"avx2", "avx512f"}) == "avx512"
    assert runner.int8_recipe({"avx2"}) == "avx2"
    assert runner.int8_recipe(set()) == "arm64"


class ScriptedSession(PeerSession):
    """Peers without venvs: openvino fails to install, one onnxruntime row fails to run."""

    def python(self, env: PeerEnv) -> Path:
        if env is OPENVINO:
            raise PeerInstallError("openvino: pip install failed (exit 1): no wheel")
        return Path(sys.executable)

    def pipeline(
        self, run: PeerRun, model: str, load: Workload, threads: int
    ) -> client.PipelineAnswer:
        self.python(run.env)
        if run.variant == "int8":
            raise PeerRunError("exit 1: RuntimeError: no kernel")
        scores: list[ScoreMap] = [dict.fromkeys(load.labels, 0.5) for _ in load.texts]
        return client.PipelineAnswer(2.0, 3.0, scores, "float32", "float32, 2 threads", {})

    def int8_peak(self, shape: Sequence[int], threads: int, budget_s: float) -> client.PeakAnswer:
        return client.PeakAnswer(3e11, "MatMulInteger", {})


def test_a_failing_peer_leaves_a_note_and_the_others_their_rows(tiny_bart_dir: Path) -> None:
    from bench.__main__ import CpuBench

    load = Workload(texts=("one text", "another"), warmup=("w",), source="test", labels=("a", "b"))
    bench = CpuBench(True, tiny_bart_dir, load)
    bench.reference = [{"a": 0.5, "b": 0.5}] * len(load.texts)
    with ScriptedSession(Path("/nonexistent")) as session:
        bench.prepare_peers(session)
        bench.peers(session)
    rows = [row.name for row in bench.report.throughput]
    assert rows == [ORT_FLOAT32_BS1, ORT_FLOAT32]
    assert [a.name for a in bench.report.agreements] == rows
    # One note per failed row, one per venv that failed to build (not one per row of it).
    assert bench.report.notes == [
        f"{ORT_INT8}: not measured: exit 1: RuntimeError: no kernel",
        "openvino peers not measured: openvino: pip install failed (exit 1): no wheel",
    ]
    assert bench.peaks["int8"] == 3e11
    assert bench.report.facts["matmul peak int8"].startswith("300.0 GOP/s")
