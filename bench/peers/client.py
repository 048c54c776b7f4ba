"""The benchmark's side of `runner.py`: a JSON request on its stdin, a JSON answer on its stdout."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers.exceptions import PeerRunError
from bench.report import ScoreMap
from bench.workload import Workload

RUNNER = Path(__file__).with_name("runner.py")
# Exporting and quantizing the full-size model, then 32 texts at batch_size 1 in
# float32, take minutes on two cores; an hour means something is stuck.
RUN_TIMEOUT_S = 3600
# Lines of the runner's stderr kept in the reason when it gave no answer.
ERROR_TAIL_LINES = 4


@dataclass(frozen=True, slots=True)
class PipelineAnswer:
    """The peer's pipeline over the texts: its time, its scores, the precision it ran in."""

    seconds: float
    cpu_seconds: float
    scores: list[ScoreMap]
    precision: str
    note: str
    versions: dict[str, str]


@dataclass(frozen=True, slots=True)
class PeakAnswer:
    """The best int8 matrix product the peer's runtime reached, in operations per second."""

    ops_per_s: float
    note: str
    versions: dict[str, str]


def pipeline_request(
    runtime: str,
    variant: str,
    batch_size: int,
    model: str,
    work_dir: Path,
    load: Workload,
    threads: int,
) -> dict[str, Any]:
    """The runner's request to time the pipeline over `load`'s texts."""
    return {
        "task": "pipeline",
        "runtime": runtime,
        "variant": variant,
        "batch_size": batch_size,
        "model": model,
        "work_dir": str(work_dir),
        "texts": list(load.texts),
        "warmup": list(load.warmup),
        "labels": list(load.labels),
        "template": load.template,
        "multi_label": load.multi_label,
        "threads": threads,
    }


def peak_request(shape: Sequence[int], threads: int, budget_s: float) -> dict[str, Any]:
    """The runner's request to time ONNX Runtime's int8 matrix product of `shape`."""
    return {"task": "int8_peak", "shape": list(shape), "threads": threads, "budget_s": budget_s}


def parse_pipeline_answer(text: str, texts: int) -> PipelineAnswer:
    """The runner's answer to a pipeline request for `texts` texts; PeerRunError if malformed."""
    raw = _answer(text)
    try:
        scores: list[ScoreMap] = [{str(k): float(v) for k, v in s.items()} for s in raw["scores"]]
        answer = PipelineAnswer(
            seconds=float(raw["seconds"]),
            cpu_seconds=float(raw["cpu_seconds"]),
            scores=scores,
            precision=str(raw["precision"]),
            note=str(raw.get("note", "")),
            versions={str(k): str(v) for k, v in raw.get("versions", {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PeerRunError(f"malformed answer ({type(error).__name__}: {error})") from None
    if len(answer.scores) != texts:
        raise PeerRunError(f"the answer scores {len(answer.scores)} texts, not {texts}")
    if answer.seconds <= 0:
        raise PeerRunError(f"the answer took {answer.seconds} s")
    return answer


def parse_peak_answer(text: str) -> PeakAnswer:
    """The runner's answer to an int8 peak request; PeerRunError if malformed."""
    raw = _answer(text)
    try:
        return PeakAnswer(
            ops_per_s=float(raw["ops_per_s"]),
            note=str(raw.get("note", "")),
            versions={str(k): str(v) for k, v in raw.get("versions", {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PeerRunError(f"malformed answer ({type(error).__name__}: {error})") from None


def call(python: Path, request: Mapping[str, Any], timeout_s: float = RUN_TIMEOUT_S) -> str:
    """Run the runner with the peer's `python` on `request`; its answer, as text.

    An answer that reports an error, or none at all, raises PeerRunError with
    the reason.
    """
    # -I: the runner's directory (this package) stays off its sys.path, and so do
    # PYTHONPATH and the user's site-packages: it sees only the peer's venv.
    command = [str(python), "-I", str(RUNNER)]
    try:
        done = subprocess.run(
            command,
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        raise PeerRunError(f"no answer within {timeout_s:g} s") from None
    except OSError as error:
        raise PeerRunError(str(error)) from None
    if done.returncode == 0:
        return done.stdout
    try:
        reason = str(json.loads(done.stdout)["error"])
    except (ValueError, KeyError, TypeError):
        reason = " | ".join(done.stderr.strip().splitlines()[-ERROR_TAIL_LINES:])
    raise PeerRunError(f"exit {done.returncode}: {reason or 'no output'}")


def _answer(text: str) -> dict[str, Any]:
    lines = text.strip().splitlines()
    if not lines:
        raise PeerRunError("empty answer")
    try:
        raw = json.loads(lines[-1])
    except ValueError:
        raise PeerRunError(f"not JSON: {lines[-1][:200]!r}") from None
    if not isinstance(raw, dict):
        raise PeerRunError(f"not a JSON object: {lines[-1][:200]!r}")
    if "error" in raw:
        raise PeerRunError(str(raw["error"]))
    return raw
