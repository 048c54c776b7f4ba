"""`python -m bench.gpu` (run by `bench/gpu.sh`): the classifier on a GPU.

In one run: the device's bfloat16 matmul peak; float32 parity with the
pipeline on the same GPU; bfloat16 and float16 agreement with float32; a
throughput sweep over forward budgets (texts/s, pairs/s, tokens/s and model
FLOP utilisation); the pipeline in bfloat16 for a ratio; optionally
torch.compile. The report is rewritten after every step, so a run cut short
still leaves what it measured. Needs no Kafka and no pydantic: only torch,
transformers, the fortunes and the repository.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel

from bench import baseline, workload
from bench.environment import describe
from bench.flops import matmul_peak, model_flops
from bench.report import Report, Throughput, agreement
from worker.nli.budget import CUDA_MAX_BATCH_TOKENS
from worker.nli.classifier import NLIClassifier
from worker.nli.loading import load_model

# The H200's dense bfloat16 peak as NVIDIA states it (~790 TFLOP/s was also
# measured on one with an 8192-cube product); the design target is 40% of it.
H200_BF16_PEAK = 790e12
SWEEP_TEXTS = 2048
QUICK_SWEEP_TEXTS = 16
PARITY_TEXTS = 32
QUICK_PARITY_TEXTS = 4
BUDGETS = (16384, 32768, CUDA_MAX_BATCH_TOKENS, 2 * CUDA_MAX_BATCH_TOKENS)
QUICK_BUDGETS = (1024, 4096)
# Events per classify call in the sweep: what a worker with max_events 512 hands
# over; and the worker's default max_events, to show what it costs on a GPU.
CALL_EVENTS = 512
DEFAULT_MAX_EVENTS = 64
# The pipeline on a sample of the sweep's texts, with the batch size.
PIPELINE_TEXTS = 256
PIPELINE_BATCH = 16
# torch.compile is skipped when less than this is left of `--time-limit`.
COMPILE_RESERVE_S = 150.0
PARITY_TOLERANCE = 1e-4
GIB = 2**30


class GpuBench:
    """The steps of the GPU benchmark, sharing the model, texts and report."""

    def __init__(self, args: argparse.Namespace, model_dir: Path) -> None:
        self.device = torch.device(args.device)
        self.model_dir = model_dir
        self.quick = args.quick
        self.out: Path = args.out
        self.deadline = time.monotonic() + args.time_limit
        count = QUICK_SWEEP_TEXTS if args.quick else SWEEP_TEXTS
        self.load = workload.fortune_workload(count)
        parity = QUICK_PARITY_TEXTS if args.quick else PARITY_TEXTS
        self.parity_texts = self.load.texts[:parity]
        self.config: PretrainedConfig = AutoConfig.from_pretrained(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.report = Report(
            title=f"GPU: the classifier on {self.device.type}",
            command="bench/gpu.sh" + (" --quick" if args.quick else ""),
        )
        self.report.environment = describe(self.device)
        self.peaks: dict[str, float] = {}

    def save(self) -> None:
        """Rewrite the report with what is known so far."""
        self.report.save(self.out, "gpu", self.report.markdown(self._baseline(), self.peaks))

    def _baseline(self) -> str:
        return next((r.name for r in self.report.throughput if r.name.startswith("pipeline")), "")

    def step(self, name: str, run: Callable[[], None]) -> None:
        """Run one step; a failure is reported and the next step still runs."""
        started = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            run()
        except Exception as error:  # the report must survive any one step
            self.report.notes.append(f"{name} failed: {type(error).__name__}: {error}")
            print(f"!! {name} failed: {error}", flush=True)
        print(f"== {name}: {time.monotonic() - started:.1f} s", flush=True)
        self.save()

    def classifier(self, dtype: torch.dtype, **options: int) -> NLIClassifier:
        """A classifier on the device in `dtype`."""
        loaded = load_model(str(self.model_dir), self.device, dtype)
        return NLIClassifier.of_model(
            str(self.model_dir), loaded.tokenizer, loaded.model, **options
        )

    def peak(self) -> None:
        """The bfloat16 matmul peak, measured."""
        self.peaks["bfloat16"] = matmul_peak(torch.bfloat16, self.device)
        if self.device.type == "cuda":
            self.peaks["nominal H200 bf16"] = H200_BF16_PEAK
        for name, value in self.peaks.items():
            self.report.facts[f"matmul peak {name}"] = f"{value / 1e9:,.0f} GFLOP/s"

    def parity(self) -> None:
        """float32 classifier against the float32 pipeline, both modes; then lower precisions."""
        texts = self.parity_texts
        classifier = self.classifier(torch.float32)
        for multi_label in (True, False):
            load = replace(self.load, texts=texts, multi_label=multi_label)
            _, ours = baseline.run_classifier(classifier, load, texts)
            _, theirs = baseline.run_pipeline(
                self.model_dir, load, texts, device=str(self.device), batch_size=PIPELINE_BATCH
            )
            found = agreement("float32 vs pipeline", theirs, ours)
            mode = "multi-label" if multi_label else "single-label"
            self.report.facts[f"float32 parity with the pipeline ({mode}, {len(texts)} texts)"] = (
                f"max abs delta {found.max_abs_delta:.1e} (promise <= {PARITY_TOLERANCE:g})"
            )
        _, reference = baseline.run_classifier(classifier, self.load, texts)
        del classifier
        for name, dtype in self._low_precisions():
            _, scores = baseline.run_classifier(self.classifier(dtype), self.load, texts)
            self.report.agreements.append(agreement(name, reference, scores))

    def _low_precisions(self) -> list[tuple[str, torch.dtype]]:
        found = [("bfloat16", torch.bfloat16)]
        if self.device.type == "cuda":  # no float16 on the CPU (see loading.resolve_dtype)
            found.append(("float16", torch.float16))
        return found

    def sweep(self) -> None:
        """Throughput over forward budgets in bfloat16, then the other variants."""
        budgets = QUICK_BUDGETS if self.quick else BUDGETS
        default = budgets[-2] if self.quick else CUDA_MAX_BATCH_TOKENS
        loaded = load_model(str(self.model_dir), self.device, torch.bfloat16)

        def on_bf16(**options: int) -> NLIClassifier:
            return NLIClassifier.of_model(
                str(self.model_dir), loaded.tokenizer, loaded.model, **options
            )

        for budget in budgets:
            self.throughput(f"bfloat16, budget {budget}", on_bf16(max_batch_tokens=budget))
        self.throughput(
            f"bfloat16, budget {default}, greedy fill (no padding guard)",
            on_bf16(max_batch_tokens=default, min_batch_tokens=default),
        )
        self.throughput(
            f"bfloat16, budget {default}, {DEFAULT_MAX_EVENTS} events per call",
            on_bf16(max_batch_tokens=default),
            call_events=DEFAULT_MAX_EVENTS,
        )
        for name, dtype in self._low_precisions()[1:]:
            self.throughput(f"{name}, budget {default}", self.classifier(dtype))

    def throughput(
        self, name: str, classifier: NLIClassifier, call_events: int = CALL_EVENTS
    ) -> None:
        """Time the sweep's texts through `classify`, `call_events` events per call.

        One untimed pass comes first: on a GPU the first pass over new batch
        shapes grows the memory pool and picks kernels, and took 2-3x as long as
        the next one on an H200.
        """
        task = baseline.task_of(self.load)
        started = time.perf_counter()
        events = [classifier.encode(text, task) for text in self.load.texts]
        encode_s = time.perf_counter() - started
        calls = [events[i : i + call_events] for i in range(0, len(events), call_events)]
        for call in calls:
            classifier.classify(call)
        _synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        for call in calls:
            classifier.classify(call)
        seconds = time.perf_counter() - started
        lengths = [n for event in events for n in event.pair_tokens]
        note = f"{1e6 * encode_s / len(events):.0f} us/text to tokenize, not timed"
        if self.device.type == "cuda":
            memory = torch.cuda.max_memory_allocated(self.device) / GIB
            note += f"; peak {memory:.1f} GiB"
        self.report.throughput.append(
            Throughput(
                name,
                seconds,
                len(events),
                len(lengths),
                sum(lengths),
                model_flops(self.config, lengths),
                note,
            )
        )

    def pipeline(self) -> None:
        """transformers' pipeline in bfloat16, batch_size=16, on a sample of the texts."""
        texts = self.load.texts[: QUICK_SWEEP_TEXTS if self.quick else PIPELINE_TEXTS]
        timing, _ = baseline.run_pipeline(
            self.model_dir,
            self.load,
            texts,
            dtype=torch.bfloat16,
            batch_size=PIPELINE_BATCH,
            device=str(self.device),
        )
        lengths = baseline.pair_lengths(self.tokenizer, texts, self.load.hypotheses())
        self.report.throughput.insert(
            0,
            Throughput(
                f"pipeline bfloat16 bs={PIPELINE_BATCH}",
                timing.seconds,
                len(texts),
                len(lengths),
                sum(lengths),
                model_flops(self.config, lengths),
                f"{len(texts)} texts",
            ),
        )

    def compiled(self) -> None:
        """torch.compile(dynamic=True) at the default budget, if time allows."""
        left = self.deadline - time.monotonic()
        if left < COMPILE_RESERVE_S:
            self.report.notes.append(f"torch.compile skipped: {left:.0f} s left of the time limit")
            return
        loaded = load_model(str(self.model_dir), self.device, torch.bfloat16)
        # The compiled wrapper forwards attributes (config, device) to the model.
        model = cast(PreTrainedModel, torch.compile(loaded.model, dynamic=True))
        classifier = NLIClassifier.of_model(str(self.model_dir), loaded.tokenizer, model)
        started = time.perf_counter()
        classifier.classify(
            [classifier.encode(t, baseline.task_of(self.load)) for t in self.load.warmup]
        )
        self.report.facts["torch.compile first call"] = f"{time.perf_counter() - started:.0f} s"
        self.throughput("bfloat16, torch.compile(dynamic=True)", classifier)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every step and leave the report in `--out`."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, to try the script")
    parser.add_argument("--quick", action="store_true", help="few texts, small budgets")
    parser.add_argument("--model", type=Path, help="model directory (default: built here)")
    parser.add_argument("--model-size", choices=["full", "tiny"], default="full")
    parser.add_argument("--out", type=Path, required=True, help="where gpu.md and gpu.json go")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument(
        "--time-limit", type=float, default=360.0, help="seconds; late optional steps are skipped"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="zsc-bench-model-") as scratch:
        started = time.monotonic()
        model_dir = args.model or workload.ensure_model(Path(scratch) / "model", args.model_size)
        print(f"== model ready: {time.monotonic() - started:.1f} s", flush=True)
        bench = GpuBench(args, model_dir)
        bench.report.environment["model"] = (
            f"BART {args.model_size} (distilbart-mnli-12-3's shape if full), random weights"
        )
        bench.step("matmul peak", bench.peak)
        bench.step("parity and agreement", bench.parity)
        bench.step("pipeline", bench.pipeline)
        bench.step("throughput sweep", bench.sweep)
        if args.compile:
            bench.step("torch.compile", bench.compiled)
    print(bench.report.markdown(bench._baseline(), bench.peaks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
