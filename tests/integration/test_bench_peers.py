"""The peer runner in its real venvs on a tiny model, where those venvs were built already.

Building them downloads several GB, so this never does: it skips unless
`python -m bench` (or `make bench`) has built them. ONNX Runtime in float32
must give the pipeline's scores; OpenVINO and int8 must at least answer for
every text; the int8 peak must be a figure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.baseline import run_pipeline
from bench.flops import CPU_PEAK_SHAPE
from bench.peers.catalog import PEER_RUNS, PeerRun
from bench.peers.envs import COMPLETE_FILE, ONNXRUNTIME, PeerEnv
from bench.peers.session import PeerSession
from bench.report import agreement
from bench.workload import Workload

TEXTS = ("The court ruled on the appeal today.", "A recipe for bread with rye and salt.")
WARMUP = ("Warming up the kernels.",)
# ONNX Runtime's float32 kernels sum in another order than torch's.
FLOAT32_TOLERANCE = 1e-4
THREADS = 2


def skip_unless_built(env: PeerEnv) -> None:
    if not (env.directory() / COMPLETE_FILE).is_file():
        pytest.skip(f"the {env.name} venv is not built (python -m bench builds it)")


@pytest.mark.parametrize("run", PEER_RUNS, ids=lambda run: run.name)
def test_a_peer_scores_every_text(run: PeerRun, tiny_bart_dir: Path) -> None:
    skip_unless_built(run.env)
    load = Workload(texts=TEXTS, warmup=WARMUP, source="test", labels=("law", "food", "sports"))
    with PeerSession() as session:
        answer = session.pipeline(run, str(tiny_bart_dir), load, THREADS)
    assert len(answer.scores) == len(TEXTS)
    assert all(set(scores) == set(load.labels) for scores in answer.scores)
    assert answer.seconds > 0 and answer.precision
    if run.variant == "float32":
        _, reference = run_pipeline(tiny_bart_dir, load, TEXTS)
        assert agreement(run.name, reference, answer.scores).max_abs_delta <= FLOAT32_TOLERANCE


def test_the_int8_peak_is_a_figure() -> None:
    skip_unless_built(ONNXRUNTIME)
    with PeerSession() as session:
        peak = session.int8_peak(CPU_PEAK_SHAPE, THREADS, budget_s=0.5)
    assert peak.ops_per_s > 0
    assert "MatMulInteger" in peak.note
