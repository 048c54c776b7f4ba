"""The benchmarks run end to end on a tiny model: every row, ratio and parity figure is there.

Their speed figures mean nothing at this size; what is tested is that the one
command of the README measures the pipeline and the worker through Kafka side
by side, and that the GPU script's code path runs (here on the CPU).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from bench.__main__ import BASELINE, BF16_BASELINE, PARITY_TOLERANCE, WORKER
from bench.proxy import RECIPES, is_built

TIMEOUT_S = 600
REPO = Path(__file__).resolve().parents[2]


def run_bench(module: str, *args: str) -> None:
    subprocess.run([sys.executable, "-m", module, *args], check=True, timeout=TIMEOUT_S, cwd=REPO)


def test_the_side_by_side_benchmark_reports_both_ratios(
    tiny_bart_dir: Path, tmp_path: Path
) -> None:
    run_bench("bench", "--quick", "--model", str(tiny_bart_dir), "--out", str(tmp_path))
    report = orjson.loads((tmp_path / "cpu.json").read_bytes())
    rows = {row["name"]: row for row in report["throughput"]}
    assert {BASELINE, "pipeline float32 bs=16", BF16_BASELINE, WORKER} <= rows.keys()
    assert all(row["texts_per_s"] > 0 for row in rows.values())
    facts = report["facts"]
    assert f"worker / {BASELINE}" in facts
    assert f"worker / {BF16_BASELINE}" in facts
    assert "latency at half the throughput" in facts
    # How much of the worker's wall time its forward passes took, and their own rate.
    assert "busy" in facts[f"{WORKER}: forward passes"]
    [parity] = [a for a in report["agreements"] if a["name"] == "float32 (worker)"]
    assert parity["max_abs_delta"] <= PARITY_TOLERANCE
    assert parity["top_label"] == 1.0
    if not facts["dtype auto on this CPU"].startswith("float32 "):
        # Where auto takes bfloat16 (AMX or AVX512-BF16) its drift is reported too.
        assert any(a["name"].endswith("(worker, dtype auto)") for a in report["agreements"])
    # The trained proxy's fidelity: measured where it is built, else a note says how.
    proxy_rows = [a for a in report["agreements"] if "trained bart proxy" in a["name"]]
    if is_built(RECIPES["bart"]):
        assert len(proxy_rows) == 4
        assert all(a["events"] == RECIPES["bart"].held_out for a in proxy_rows)
    else:
        assert any("python -m bench.proxy" in note for note in report["notes"])
    markdown = (tmp_path / "cpu.md").read_text()
    assert f"| {WORKER} |" in markdown
    # --quick builds no peer venvs, and says so.
    assert any("peers" in note and "skipped" in note for note in report["notes"])


def test_the_gpu_benchmark_runs_its_code_path_on_the_cpu(
    tiny_bart_dir: Path, tmp_path: Path
) -> None:
    run_bench(
        "bench.gpu",
        "--device",
        "cpu",
        "--quick",
        "--model",
        str(tiny_bart_dir),
        "--out",
        str(tmp_path),
    )
    report = orjson.loads((tmp_path / "gpu.json").read_bytes())
    assert any(row["name"].startswith("bfloat16, budget") for row in report["throughput"])
    parities = [v for k, v in report["facts"].items() if k.startswith("float32 parity")]
    assert len(parities) == 2
    assert all(float(v.split()[3]) <= PARITY_TOLERANCE for v in parities)
