"""`python -m bench`: the worker end to end through Kafka beside transformers' pipeline.

One run measures, on the same texts, labels and model: the matmul peak of this
CPU in float32 and bfloat16; the pipeline with its defaults (float32,
batch_size=1), with batch_size=16, and in bfloat16 with batch_size=16; then the
worker through Kafka (dtype auto), its latency at half its throughput, its
peak memory, the int8 opt-in, and two worker processes. Between the two come
the peers a user would pick instead of the worker, each in a venv of its own
(bench/peers): ONNX Runtime in float32 and int8, OpenVINO in its default
precision and with int8 weights, and the CPU's int8 matmul peak. It prints one
markdown report with every ratio and the issue's targets, and saves it (JSON
too) under `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from bench import baseline, e2e, workload
from bench.environment import cpu_flags, describe, has_vnni, load_average
from bench.flops import CPU_PEAK_SHAPE, matmul_peak, model_flops
from bench.peers.catalog import (
    OPENVINO_DEFAULT,
    OPENVINO_DEFAULT_BS1,
    ORT_FLOAT32,
    ORT_FLOAT32_BS1,
    ORT_INT8,
    PEER_RUNS,
)
from bench.peers.envs import ONNXRUNTIME, OPENVINO, PEERS_DIR
from bench.peers.exceptions import PeerError, PeerInstallError
from bench.peers.session import PeerSession
from bench.report import Report, ScoreMap, Throughput, agreement
from bench.serve import ServeSpec
from bench.targets import Target, verdicts

CPU = torch.device("cpu")
BASELINE = "pipeline float32 bs=1"
PIPELINE_BATCH = 16
PIPELINE_BATCHED = f"pipeline float32 bs={PIPELINE_BATCH}"
BF16_BASELINE = f"pipeline bfloat16 bs={PIPELINE_BATCH}"
WORKER = "worker e2e, dtype auto"
WORKER_INT8 = "worker e2e, dtype int8 (opt-in)"
# bfloat16 has no hardware path on CPUs without AVX512-BF16 or AMX: the pipeline
# then takes many minutes for the 32 texts, so it runs on a stride sample and its
# time is scaled to the whole set by FLOPs.
BF16_SAMPLE_TEXTS = 4
QUICK_BF16_SAMPLE_TEXTS = 1
# Events of the latency run, produced at LATENCY_LOAD times the measured throughput.
LATENCY_EVENTS = 8
QUICK_LATENCY_EVENTS = 4
LATENCY_LOAD = 0.5
# The worker's batching default (config/settings.py): the latency bound uses it.
MAX_WAIT_MS = 50
# The targets.
TARGET_VS_DEFAULTS = 6.0
TARGET_VS_BF16 = 2.0
TARGET_VS_BATCHED_PIPELINE = 1.25
TARGET_VS_PEER = 1.0
TARGET_INT8_VS_ORT_INT8 = 1.2
TARGETS = (
    Target("worker", WORKER, (BASELINE,), TARGET_VS_DEFAULTS),
    Target("worker", WORKER, (BF16_BASELINE,), TARGET_VS_BF16),
    Target("worker", WORKER, (PIPELINE_BATCHED, BF16_BASELINE), TARGET_VS_BATCHED_PIPELINE),
    Target("worker", WORKER, (ORT_FLOAT32_BS1, ORT_FLOAT32), TARGET_VS_PEER),
    Target("worker", WORKER, (OPENVINO_DEFAULT_BS1, OPENVINO_DEFAULT), TARGET_VS_PEER),
    Target("worker int8", WORKER_INT8, (ORT_INT8,), TARGET_INT8_VS_ORT_INT8),
    Target("worker int8", WORKER_INT8, (BASELINE,), TARGET_VS_DEFAULTS, vnni_only=True),
)
# Seconds the int8 peak repeats its product, as `matmul_peak` does.
INT8_PEAK_BUDGET_S = 3.0
PARITY_TOLERANCE = 1e-4
GIB = 2**30
PEAK_DTYPES = ("float32", "bfloat16")


class CpuBench:
    """The phases of the side-by-side benchmark, sharing the model, texts and report."""

    def __init__(self, quick: bool, model_dir: Path, load: workload.Workload) -> None:
        self.quick = quick
        self.model_dir = model_dir
        self.load = load
        self.config = AutoConfig.from_pretrained(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.report = Report(
            title="CPU: the worker through Kafka beside the pipeline",
            command="python -m bench" + (" --quick" if quick else ""),
        )
        self.report.environment = describe(CPU)
        mode = "multi-label" if load.multi_label else "single-label"
        self.report.environment["workload"] = (
            f"{len(load.texts)} texts ({load.source}) x {len(load.labels)} labels, {mode}"
        )
        self.report.environment["model"] = describe_model(model_dir, self.config)
        self.peaks: dict[str, float] = {}
        # The pipeline's float32 scores: the reference of every agreement.
        self.reference: list[ScoreMap] = []
        # The end-to-end rows, for their time in forward passes (see `forward_passes`).
        self.end_to_end_runs: list[tuple[Throughput, e2e.EndToEnd]] = []

    def progress(self, message: str) -> None:
        """A timestamped line, with the machine's load (other work skews timings)."""
        print(f"[{time.strftime('%H:%M:%S')}] {message} (load {load_average()})", flush=True)

    def row(
        self,
        name: str,
        seconds: float,
        texts: tuple[str, ...],
        note: str = "",
        cpu_seconds: float | None = None,
    ) -> Throughput:
        """A throughput row for `texts` scored in `seconds`."""
        lengths = baseline.pair_lengths(self.tokenizer, texts, self.load.hypotheses())
        flops = model_flops(self.config, lengths)
        return Throughput(
            name, seconds, len(texts), len(lengths), sum(lengths), flops, note, cpu_seconds
        )

    def add(self, measured: Throughput) -> None:
        """Record a row and say so at once: a run cut short still shows what it measured."""
        self.report.throughput.append(measured)
        self.progress(f"{measured.name}: {measured.seconds:.1f} s, {measured.texts_per_s:.3g}/s")

    def matmul_peaks(self) -> None:
        """The best float32 and bfloat16 products of this CPU; called at the start and the end.

        Other work on the machine only ever lowers a measurement, so the higher
        of the two is the peak.
        """
        for dtype in PEAK_DTYPES:
            seen = matmul_peak(getattr(torch, dtype), CPU)
            self.peaks[dtype] = max(self.peaks.get(dtype, 0.0), seen)
            self.report.facts[f"matmul peak {dtype}"] = f"{self.peaks[dtype] / 1e9:.1f} GFLOP/s"

    def pipelines(self) -> None:
        """The pipeline's defaults, batch_size=16, and bfloat16 with batch_size=16."""
        load, texts = self.load, self.load.texts
        timing, self.reference = baseline.run_pipeline(self.model_dir, load, texts)
        self.add(self.row(BASELINE, timing.seconds, texts, cpu_seconds=timing.cpu_seconds))
        timing, _ = baseline.run_pipeline(self.model_dir, load, texts, batch_size=PIPELINE_BATCH)
        self.add(self.row(PIPELINE_BATCHED, timing.seconds, texts, cpu_seconds=timing.cpu_seconds))

        count = QUICK_BF16_SAMPLE_TEXTS if self.quick else BF16_SAMPLE_TEXTS
        sample = workload.stride_sample(texts, count)
        timing, scores = baseline.run_pipeline(
            self.model_dir, load, sample, dtype=torch.bfloat16, batch_size=PIPELINE_BATCH
        )
        scale = self.row("whole", 1, texts).flops / self.row("sample", 1, sample).flops
        note = f"timed on {len(sample)} of the texts, scaled by FLOPs"
        self.add(
            self.row(BF16_BASELINE, timing.seconds * scale, texts, note, timing.cpu_seconds * scale)
        )
        reference = [self.reference[texts.index(text)] for text in sample]
        self.report.agreements.append(agreement("bfloat16 (pipeline)", reference, scores))

    def prepare_peers(self, session: PeerSession) -> None:
        """Build the peers' venvs (the first run downloads them) before anything is timed.

        A venv that fails to build is noted by `peers`, which skips its rows.
        """
        for env in (ONNXRUNTIME, OPENVINO):
            self.progress(f"peer venv {env.name}: {env.directory(session.root)}")
            with contextlib.suppress(PeerInstallError):
                session.python(env)

    def peers(self, session: PeerSession) -> None:
        """Each peer's pipeline on the same texts, with its scores' agreement; the int8 peak.

        Every peer runs on torch's intra-op thread count, the worker's: ONNX
        Runtime's intra-op threads and OpenVINO's INFERENCE_NUM_THREADS are set
        to it. A peer that fails leaves a note instead of a row.
        """
        threads = torch.get_num_threads()
        self.report.facts["peer threads"] = (
            f"{threads}, torch's intra-op threads as the worker uses them; ONNX Runtime's "
            "intra-op threads and OpenVINO's INFERENCE_NUM_THREADS are set to it"
        )
        texts = self.load.texts
        for run in PEER_RUNS:
            try:
                session.python(run.env)
            except PeerInstallError as error:
                note = f"{run.env.name} peers not measured: {error}"
                if note not in self.report.notes:
                    self.report.notes.append(note)
                continue
            self.progress(f"peer: {run.name}")
            try:
                answer = session.pipeline(run, str(self.model_dir), self.load, threads)
            except PeerError as error:
                self.report.notes.append(f"{run.name}: not measured: {error}")
                continue
            self.add(self.row(run.name, answer.seconds, texts, answer.note, answer.cpu_seconds))
            self.report.agreements.append(agreement(run.name, self.reference, answer.scores))
            self.report.environment[f"peer {run.env.name}"] = ", ".join(
                f"{name} {version}" for name, version in answer.versions.items()
            )
        self.progress("int8 matmul peak (ONNX Runtime MatMulInteger)")
        try:
            peak = session.int8_peak(CPU_PEAK_SHAPE, threads, INT8_PEAK_BUDGET_S)
        except PeerInstallError:
            return  # noted with its rows
        except PeerError as error:
            self.report.notes.append(f"int8 matmul peak: not measured: {error}")
            return
        self.peaks["int8"] = peak.ops_per_s
        self.report.facts["matmul peak int8"] = (
            f"{peak.ops_per_s / 1e9:.1f} GOP/s (ONNX Runtime {peak.note})"
        )

    def end_to_end(self, broker_kind: str, bootstrap_servers: str) -> None:
        """The worker through Kafka: float32 with latency, then int8 and two processes."""
        self.report.facts["broker"] = broker_kind
        load = self.load
        spec = ServeSpec(
            bootstrap_servers=bootstrap_servers,
            group_id="bench",
            input_topic="",
            output_topic="",
            model=str(self.model_dir),
            labels=load.labels,
            template=load.template,
            multi_label=load.multi_label,
            status_path="",
            stats_path="",
        )
        # One warm-up event per input partition: each worker process gets one.
        warmup = load.warmup[: e2e.INPUT_PARTITIONS]
        latency_count = QUICK_LATENCY_EVENTS if self.quick else LATENCY_EVENTS
        self.progress("worker end to end, then its latency")
        run = e2e.measure(
            spec,
            warmup,
            load.texts,
            latency_texts=workload.stride_sample(load.texts, latency_count),
            latency_load=LATENCY_LOAD,
        )
        self.add_end_to_end(WORKER, run)
        # The worker resolved `dtype auto` itself (CPU flags and a matmul probe).
        auto_dtype = run.stats[0]["precision"]
        self.report.facts["dtype auto on this CPU"] = f"{auto_dtype} ({run.stats[0]['runtime']})"
        float32 = run
        if auto_dtype != "float32":
            # The parity promise is float32's: measure the worker in it too.
            self.progress("worker end to end, float32")
            float32 = e2e.measure(replace(spec, dtype="float32"), warmup, load.texts)
            self.add_end_to_end("worker e2e, float32", float32)
            self.report.agreements.append(
                agreement(f"{auto_dtype} (worker, dtype auto)", self.reference, scores_of(run))
            )
        self.worker_facts(run, float32)
        if self.quick:
            return

        self.progress("worker end to end, int8")
        int8 = e2e.measure(replace(spec, dtype="int8"), warmup, load.texts)
        self.add_end_to_end(WORKER_INT8, int8)
        # OpenVINO where the CPU has an int8 dot product, else ONNX Runtime.
        self.report.facts["dtype int8 on this CPU"] = f"int8 ({int8.stats[0]['runtime']})"
        self.report.agreements.append(agreement("int8 (worker)", self.reference, scores_of(int8)))

        self.progress("worker end to end, 2 processes")
        pair = e2e.measure(spec, warmup, load.texts, processes=2)
        self.add_end_to_end("worker e2e, dtype auto, 2 processes", pair)
        self.report.facts["scaling: 2 processes / 1 process"] = f"{run.seconds / pair.seconds:.2f}x"

    def add_end_to_end(self, name: str, run: e2e.EndToEnd) -> None:
        """Record an end-to-end row, kept for its forward passes."""
        measured = self.row(name, run.seconds, self.load.texts, cpu_seconds=run.cpu_seconds)
        self.add(measured)
        self.end_to_end_runs.append((measured, run))

    def forward_passes(self) -> None:
        """Each end-to-end row's time inside the model's forward passes, against its wall
        time, and the rate inside them: what separates the classifier's own speed from
        the worker's around it (Kafka, batching, waiting). Called after the last peaks."""
        for measured, run in self.end_to_end_runs:
            busy = run.busy_seconds()
            processes = len(run.stats)
            precision = run.stats[0]["precision"]
            rate = measured.flops / busy
            peak = self.peaks.get(precision)
            share = f", {100 * rate / peak:.0f}% of the {precision} peak" if peak else ""
            self.report.facts[f"{measured.name}: forward passes"] = (
                f"{busy:.1f} s over {processes} x {run.seconds:.1f} s of wall time "
                f"({100 * busy / (processes * run.seconds):.0f}% busy); "
                f"{rate / 1e9:.0f} GFLOP/s inside them{share}"
            )

    def worker_facts(self, run: e2e.EndToEnd, float32: e2e.EndToEnd) -> None:
        """Parity of the float32 worker with the pipeline; the latency of `run` against its
        bound, and peak memory."""
        parity = agreement("float32 (worker)", self.reference, scores_of(float32))
        self.report.agreements.insert(0, parity)
        self.report.facts["worker float32 vs pipeline, max abs delta"] = (
            f"{parity.max_abs_delta:.1e} (promise: <= {PARITY_TOLERANCE:g})"
        )
        if not run.append_time:
            self.report.notes.append(
                "the broker ignored LogAppendTime: latencies end when the worker sent the output"
            )
        if run.backlog_latencies_s:
            p50, longest = np.percentile(run.backlog_latencies_s, [50, 100])
            self.report.facts["latency with a backlog"] = (
                f"{run.events} events produced at once: p50 {p50:.2f} s, last {longest:.2f} s"
            )
        window = run.latency_window
        if run.latencies_s and run.latency_rate and window is not None:
            # Only the paced events are on the model in the latency window: its
            # forward passes are theirs.
            forwards = run.forward_seconds(window)
            median_forward = statistics.median(forwards) if forwards else float("nan")
            bound = MAX_WAIT_MS / 1000 + 2 * median_forward
            p50, p99 = np.percentile(run.latencies_s, [50, 99])
            self.report.facts["latency at half the throughput"] = (
                f"{len(run.latencies_s)} events at {run.latency_rate:.3g}/s: p50 {p50:.2f} s, "
                f"p99 {p99:.2f} s; bound max_wait_ms + 2 x median forward pass of their own "
                f"({median_forward:.2f} s, of {len(forwards)}) = {bound:.2f} s: "
                f"{'met' if p99 <= bound else 'NOT met'}; "
                f"longest forward pass {max(forwards, default=float('nan')):.2f} s"
            )
            # The same bound per event, on its own forward pass: what compute allows it.
            own = [run.own_forward_seconds(text, window) for text in run.latency_texts]
            within = sum(
                1
                for latency, seconds in zip(run.latencies_s, own, strict=True)
                if seconds is not None and latency <= MAX_WAIT_MS / 1000 + 2 * seconds
            )
            self.report.facts["latency per event"] = (
                f"{within} of {len(own)} events within max_wait_ms + 2 x their own forward pass"
            )
        rss = max(s["peak_rss_bytes"] for s in run.stats)
        self.report.facts["worker peak RSS"] = f"{rss / GIB:.2f} GiB"

    def trained_proxy(self) -> None:
        """bfloat16 and int8 against float32 on a small model trained to give spread scores.

        Random weights score every label about the same, so their agreement
        above is pessimistic; bench.proxy trains a BART NLI model on the fortunes
        (minutes, once) and measures on its held-out texts. Under --quick only
        where it is built already.
        """
        from bench import proxy

        recipe = proxy.RECIPES["bart"]
        if self.quick and not proxy.is_built(recipe):
            self.report.notes.append(
                "trained proxy's fidelity skipped (--quick): `python -m bench.proxy` builds it"
            )
            return
        self.progress("the trained proxy: bfloat16 and int8 against float32")
        measured = proxy.measure(recipe, self.progress)
        self.report.agreements += measured.agreements
        self.report.facts |= {f"{measured.model}: {k}": v for k, v in measured.facts.items()}

    def verdicts(self) -> None:
        """The worker's ratios against the issue's targets, for the rows that were measured."""
        self.report.facts |= verdicts(TARGETS, self.report.find, has_vnni(cpu_flags()))


def describe_model(model_dir: Path, config: PretrainedConfig) -> str:
    """The model's family and size; whether it is the default random-weight stand-in."""
    if config.is_encoder_decoder:
        shape = f"d_model {config.d_model}, {config.encoder_layers}+{config.decoder_layers} layers"
    else:
        shape = f"hidden {config.hidden_size}, {config.num_hidden_layers} layers"
    found = f"{model_dir}: {config.model_type}, {shape}"
    if Path(model_dir) == workload.default_model_dir("full"):
        found += " (distilbart-mnli-12-3's shape, random weights)"
    return found


def scores_of(run: e2e.EndToEnd) -> list[ScoreMap]:
    """The timed events' scores, in the order of the texts."""
    return [run.outputs[f"run-{n}"].scores for n in range(run.events)]


def main(argv: list[str] | None = None) -> int:
    """Run the side-by-side benchmark and print its report."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 texts, fewer runs (~2 min)")
    parser.add_argument(
        "--model",
        type=Path,
        help="model directory or hub id (default: distilbart-mnli-12-3's shape, random "
        "weights, built and cached)",
    )
    parser.add_argument(
        "--texts",
        type=Path,
        help="your texts instead of the fortunes: JSON lines with a 'text' field or one per "
        f"line; the last {workload.WARMUP_TEXTS} only warm up",
    )
    parser.add_argument("--labels", help=f"comma-separated (default: {','.join(workload.LABELS)})")
    parser.add_argument("--template", default=workload.TEMPLATE, help="the hypothesis template")
    parser.add_argument("--single-label", action="store_true", help="default: multi-label")
    parser.add_argument("--out", type=Path, help="write cpu.md and cpu.json here")
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        help="ONNX Runtime and OpenVINO beside the worker, each in a venv of its own under "
        f"{PEERS_DIR} (the first run downloads about 6 GB each); default: on, off "
        "with --quick",
    )
    args = parser.parse_args(argv)
    model_dir = args.model or workload.ensure_model(workload.default_model_dir("full"))
    sample = workload.QUICK_TEXTS if args.quick else None
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    if args.texts:
        load = workload.file_workload(
            args.texts,
            labels or workload.LABELS,
            args.template,
            not args.single_label,
            sample,
        )
    elif labels or args.single_label or args.template != workload.TEMPLATE:
        parser.error("--labels, --template and --single-label go with --texts")
    else:
        load = workload.fortune_workload(sample=sample)
    bench = CpuBench(args.quick, model_dir, load)
    with_peers = not args.quick if args.peers is None else args.peers
    if args.peers is not None:
        bench.report.command += " --peers" if args.peers else " --no-peers"
    if not with_peers:
        why = "--no-peers" if args.peers is False else "--quick; --peers adds them"
        bench.report.notes.append(f"peers (ONNX Runtime, OpenVINO) skipped ({why})")
    with PeerSession() as peers:
        if with_peers:
            bench.prepare_peers(peers)
        # The broker next: its start-up (a JVM warming up) must not overlap any timing.
        with e2e.running_broker() as broker:
            bench.progress(f"{broker.kind} broker up; matmul peaks")
            bench.matmul_peaks()
            bench.progress("the pipeline")
            bench.pipelines()
            if with_peers:
                bench.peers(peers)
            bench.end_to_end(broker.kind, broker.bootstrap_servers)
            bench.progress("matmul peaks again")
            bench.matmul_peaks()
    bench.forward_passes()
    bench.trained_proxy()
    bench.verdicts()
    bench.report.facts["load average at end"] = load_average()
    markdown = bench.report.markdown(BASELINE, bench.peaks)
    print(markdown)
    if args.out:
        bench.report.save(args.out, "cpu", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
