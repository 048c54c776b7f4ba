"""`python -m bench.levers`: the classifier's performance levers, one at a time, side by side.

Every variant scores the same texts, cut into micro-batches as the worker's
batcher cuts a backlog with its default bounds, so the forward batches are the
ones the worker runs. Variants take turns round after round (contention on a
shared machine hits them alike) and each is reported by its median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from bench import baseline, workload
from bench.environment import describe, load_average
from bench.flops import model_flops
from worker.batching import MicroBatcher
from worker.nli.base import EncodedEvent
from worker.nli.budget import CPU_MAX_BATCH_TOKENS, CPU_MIN_BATCH_TOKENS
from worker.nli.classifier import NLIClassifier, load_classifier
from worker.nli.loading import LoadedModel, load_model, resolve_dtype
from worker.nli.onnx_runtime import INT8, OnnxForward
from worker.nli.openvino_runtime import OpenVinoForward
from worker.nli.packed import pack_products
from worker.nli.pooled import pool_last_layer
from worker.nli.relative import window_relative_attention

CPU = torch.device("cpu")
# The worker's batching defaults (config/settings.py).
MICRO_BATCH_EVENTS = 64
MICRO_BATCH_TOKENS = 8192
LEVER_TEXTS = 16
# The model in torch, as the worker runs it there (products on packed weights,
# GELU fused): where the worker runs another runtime, the torch levers' reference.
TORCH = "torch: pooled last layer, products on packed weights, GELU fused"
QUICK_TEXTS = 4
ROUNDS = 2
# Forward budgets around the default.
BUDGETS = (2048, 8192, 16384)
# Tokenizing takes microseconds: it is timed over this many passes of the texts.
TOKENIZE_REPEATS = 20
# Texts sent twice in one batch, to show that identical texts are scored once.
DUPLICATED_TEXTS = 4
# OpenVINO's profile (--profile): its operator types, the most costly first.
OPENVINO_PROFILE_ROWS = 8
FULLY_CONNECTED = "FullyConnected"
INT8_OPT_IN = "int8 (opt-in)"
UNFUSED = "openvino without its generated kernels (attention unfused)"
# What the profile breakdown (--profile) counts each operator as, by name; the
# first match wins, and the rest is "other".
OPERATOR_GROUPS = (
    ("matrix products", ("addmm", "aten::mm", "bmm", "linear_pointwise", "mkldnn_linear")),
    ("attention", ("scaled_dot_product", "softmax", "baddbmm")),
    ("GELU", ("gelu",)),
    ("layer norms", ("layer_norm",)),
    ("copies and casts", ("copy_", "aten::to", "clone", "contiguous", "cat", "index")),
    ("other elementwise", ("add", "mul", "div", "sub", "masked_fill", "where")),
)


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of running the classifier."""

    name: str
    classifier: NLIClassifier
    threads: int | None = None


def micro_batches(events: Sequence[EncodedEvent]) -> list[list[EncodedEvent]]:
    """The events cut as the worker's batcher cuts a backlog (no waiting involved)."""
    batcher: MicroBatcher[EncodedEvent] = MicroBatcher(
        MICRO_BATCH_EVENTS, MICRO_BATCH_TOKENS, max_wait_s=0.0, clock=lambda: 0.0
    )
    batches = [b.items for e in events for b in batcher.add(e, e.pair_count, e.max_pair_tokens)]
    if (last := batcher.flush()) is not None:
        batches.append(last.items)
    return batches


def timed(variant: Variant, texts: Sequence[str], load: workload.Workload) -> float:
    """Seconds to tokenize and score `texts` the worker's way."""
    task = baseline.task_of(load)
    threads = torch.get_num_threads()
    if variant.threads:
        torch.set_num_threads(variant.threads)
    try:
        started = time.perf_counter()
        events = [variant.classifier.encode(text, task) for text in texts]
        for batch in micro_batches(events):
            variant.classifier.classify(batch)
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)


def variants(model_dir: str, dtype: torch.dtype, with_compile: bool) -> list[Variant]:
    """The worker's classifier in `dtype` first, then the model in torch as the worker would
    run it there (the levers' reference where the worker runs another runtime), then one
    variant per lever."""

    def loaded(
        attention: str | None = None,
        pooled: bool = True,
        packed: bool = True,
        fused: bool = True,
        windowed: bool = True,
    ) -> LoadedModel:
        model = load_model(model_dir, CPU, dtype, attention)
        if pooled:
            pool_last_layer(model.model)
        # As the worker runs a model in torch: bfloat16 on a CPU packs the products'
        # weights and fuses GELU into its product, and DeBERTa's relative terms cover
        # the distances present.
        if packed and dtype == torch.bfloat16:
            pack_products(model.model, fuse_gelu=fused)
        if windowed:
            window_relative_attention(model.model)
        return model

    def classifier(model: LoadedModel, **options: int) -> NLIClassifier:
        return NLIClassifier.of_model(model_dir, model.tokenizer, model.model, **options)

    default = load_classifier(model_dir, "cpu", str(dtype).removeprefix("torch."))
    runtime = default.info["runtime"]

    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def budgeted(**options: int) -> NLIClassifier:
        """The worker's classifier, its forward batches cut to other bounds."""
        return NLIClassifier(model_dir, tokenizer, config, default._forward_pass, **options)

    def unfused(forward: OpenVinoForward) -> NLIClassifier:
        """The worker's classifier on `forward`'s model, compiled without OpenVINO's
        generated kernels."""
        return NLIClassifier(model_dir, tokenizer, config, forward.recompiled(fused_kernels=False))

    in_torch = default if runtime == "torch" else classifier(loaded())
    found = [
        Variant(
            f"default: {runtime}, budget {CPU_MAX_BATCH_TOKENS}, padding guard from "
            f"{CPU_MIN_BATCH_TOKENS}, last layer on the pooled row",
            default,
        ),
        *(
            [Variant(UNFUSED, unfused(default._forward_pass))]
            if isinstance(default._forward_pass, OpenVinoForward)
            else []
        ),
        # A guard that starts at the budget never fires: the greedy fill of before.
        Variant("greedy fill, no padding guard", budgeted(min_batch_tokens=CPU_MAX_BATCH_TOKENS)),
        *(Variant(f"budget {b}", budgeted(max_batch_tokens=b)) for b in BUDGETS),
    ]
    if in_torch is not default:
        found.append(Variant(TORCH, in_torch))
    found += [
        Variant("torch: last layer on every row", classifier(loaded(pooled=False))),
        Variant("torch: GELU as an operator of its own", classifier(loaded(fused=False))),
        Variant(
            "torch: products as torch's Linear (weights reordered at each call, GELU apart)",
            classifier(loaded(packed=False)),
        ),
        Variant(
            "torch: DeBERTa's relative terms over every bucket",
            classifier(loaded(windowed=False)),
        ),
        Variant("torch: 1 thread", in_torch, threads=1),
        Variant("torch: eager attention", classifier(loaded("eager"))),
    ]
    int8 = load_classifier(model_dir, "cpu", "int8")
    found.append(Variant(f"{INT8_OPT_IN}: {int8.info['runtime']}", int8))
    if isinstance(exported := int8._forward_pass, OpenVinoForward):
        found.append(Variant(f"{INT8_OPT_IN}: {UNFUSED}", unfused(exported)))
        # The same export in ONNX Runtime's int8.
        onnx_int8 = OnnxForward(exported.path, exported.input_names, INT8)
        found.append(
            Variant(
                "int8 in ONNX Runtime (weights per tensor), as on a CPU without VNNI",
                NLIClassifier(model_dir, tokenizer, config, onnx_int8),
            )
        )
    if with_compile:
        compiled = loaded()
        # The compiled wrapper forwards attributes (config, device) to the model.
        model = cast(PreTrainedModel, torch.compile(compiled.model, dynamic=True))
        found.append(
            Variant(
                "torch: torch.compile(dynamic=True)", classifier(compiled._replace(model=model))
            )
        )
    return found


def tokenize_costs(
    classifier: NLIClassifier, model_dir: str, load: workload.Workload
) -> tuple[float, float]:
    """Microseconds per text: the classifier's encode, and the pipeline's way (every pair)."""
    task = baseline.task_of(load)
    # A tokenizer of its own: calling one leaves settings in its backend, which
    # the classifier relies on being its alone.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hypotheses = load.hypotheses()
    texts = list(load.texts) * TOKENIZE_REPEATS

    def per_text(tokenize: Callable[[str], object]) -> float:
        started = time.perf_counter()
        for text in texts:
            tokenize(text)
        return 1e6 * (time.perf_counter() - started) / len(texts)

    ours = per_text(lambda text: classifier.encode(text, task))
    theirs = per_text(
        lambda text: tokenizer([text] * len(hypotheses), hypotheses, truncation="only_first")
    )
    return ours, theirs


def dedupe_costs(classifier: NLIClassifier, load: workload.Workload) -> tuple[float, float]:
    """Seconds for one batch of a few texts, then for a batch holding each of them twice."""
    task = baseline.task_of(load)
    events = [classifier.encode(text, task) for text in load.texts[:DUPLICATED_TEXTS]]
    costs = []
    for batch in (events, events * 2):
        started = time.perf_counter()
        classifier.classify(batch)
        costs.append(time.perf_counter() - started)
    return costs[0], costs[1]


def profile(
    variant: Variant, texts: Sequence[str], load: workload.Workload, flops: float
) -> list[str]:
    """Where one pass of `variant` over `texts` (`flops` of work) spends its time, by
    operator group (torch profiler, self time): how much is left outside the matrix
    products, and their own rate."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        total = timed(variant, texts, load)
    spent = dict.fromkeys([name for name, _ in OPERATOR_GROUPS] + ["other"], 0.0)
    for event in prof.key_averages():
        group = next(
            (name for name, keys in OPERATOR_GROUPS if any(k in event.key for k in keys)),
            "other",
        )
        spent[group] += event.self_cpu_time_total / 1e6
    profiled = sum(spent.values())
    products = spent[OPERATOR_GROUPS[0][0]]
    return [
        f"## Where the time of `{variant.name}` goes: one profiled pass, {total:.1f} s "
        "(operators' self time, torch profiler)",
        "",
        "| operators | seconds | share |",
        "|---|---|---|",
        *(
            f"| {name} | {seconds:.2f} | {100 * seconds / profiled:.0f}% |"
            for name, seconds in spent.items()
        ),
        "",
        f"- the pass's matmul FLOPs over the matrix products' time alone: "
        f"{flops / products / 1e9:.0f} GFLOP/s (a little high: attention's products are "
        "counted in the FLOPs, timed under attention)",
    ]


def profile_openvino(
    name: str,
    classifier: NLIClassifier,
    forward: OpenVinoForward,
    texts: Sequence[str],
    load: workload.Workload,
    flops: float,
) -> list[str]:
    """Where one pass of `classifier` (variant `name`, on `forward`, OpenVINO compiled to
    profile) over `texts` (`flops` of work) spends its time, by OpenVINO operator type
    (its own performance counters)."""
    variant = Variant(f"{name}, profiled", classifier)
    # A pass over the same texts first: the first pass of a batch shape costs OpenVINO
    # more than its operators' own times show.
    timed(variant, texts, load)
    forward.op_seconds.clear()
    total = timed(variant, texts, load)
    spent = forward.op_seconds
    profiled = sum(spent.values())
    # Products on float weights, or on int8 ones ("FullyConnectedCompressed").
    products = sum(s for op, s in spent.items() if op.startswith(FULLY_CONNECTED))
    return [
        f"## Where the time of `{name}` goes: its second pass over the texts, "
        f"{total:.1f} s, {profiled:.1f} s of it in operators (OpenVINO's performance "
        "counters, by operator type)",
        "",
        "| operators | seconds | share |",
        "|---|---|---|",
        *(
            f"| {name} | {seconds:.2f} | {100 * seconds / profiled:.0f}% |"
            for name, seconds in spent.most_common(OPENVINO_PROFILE_ROWS)
        ),
        "",
        f"- the pass's matmul FLOPs over the FullyConnected operators' time alone: "
        f"{flops / products / 1e9:.0f} GFLOP/s (a little high: attention's "
        "products are counted in the FLOPs, timed as MatMul)",
    ]


def main(argv: list[str] | None = None) -> int:
    """Measure every lever and print a markdown table."""
    parser = argparse.ArgumentParser(prog="python -m bench.levers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TEXTS} texts, 1 round")
    parser.add_argument(
        "--texts", type=int, default=LEVER_TEXTS, help="a stride sample of the 32 (or of --file's)"
    )
    parser.add_argument(
        "--file",
        type=Path,
        help="your texts instead of the fortunes, as `python -m bench --texts` reads them",
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--compile", action="store_true", help="add torch.compile(dynamic=True)")
    parser.add_argument("--model", help="model directory (default: built and cached)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="add the torch model's time by operator group, and OpenVINO's where it runs",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="torch precision of the variants: auto (as the worker picks it), bfloat16, float32",
    )
    args = parser.parse_args(argv)
    count, rounds = (QUICK_TEXTS, 1) if args.quick else (args.texts, args.rounds)
    model_dir = args.model or str(workload.ensure_model(workload.default_model_dir("full")))
    load = (
        workload.file_workload(args.file, sample=count)
        if args.file
        else workload.fortune_workload(sample=count)
    )

    dtype = resolve_dtype(args.dtype, CPU)
    found = variants(model_dir, dtype, args.compile)
    default = found[0]
    for variant in found:  # warm-up; torch.compile compiles here
        started = time.perf_counter()
        timed(variant, load.warmup[:1], load)
        print(f"warm-up {variant.name}: {time.perf_counter() - started:.0f} s", flush=True)
    seconds: dict[str, list[float]] = {v.name: [] for v in found}
    for round_ in range(1, rounds + 1):
        for variant in found:
            seconds[variant.name].append(timed(variant, load.texts, load))
            took = seconds[variant.name][-1]
            print(
                f"round {round_}, {variant.name}: {took:.1f} s (load {load_average()})", flush=True
            )

    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    flops = model_flops(config, baseline.pair_lengths(tokenizer, load.texts, load.hypotheses()))
    reference = statistics.median(seconds[default.name])
    lines = [
        f"## Levers: {len(load.texts)} texts x {len(load.labels)} labels, "
        f"{str(dtype).removeprefix('torch.')}, median of {rounds} round(s)",
        "",
        f"`python -m bench.levers{' --quick' if args.quick else ''} --dtype {args.dtype}"
        f"{f' --file {args.file}' if args.file else ''}`",
        "",
        f"- texts: {load.source}",
        "",
        *(f"- {key}: {value}" for key, value in describe(CPU).items()),
        "",
        "| variant | seconds | GFLOP/s | speed vs default |",
        "|---|---|---|---|",
    ]
    for variant in found:
        median = statistics.median(seconds[variant.name])
        lines.append(
            f"| {variant.name} | {median:.1f} | {flops / median / 1e9:.1f} | "
            f"{reference / median:.2f} |"
        )
    ours, theirs = tokenize_costs(default.classifier, model_dir, load)
    once, twice = dedupe_costs(default.classifier, load)
    lines += [
        "",
        f"- tokenizing one text for {len(load.labels)} labels: {ours:.0f} us (premise once, "
        f"hypotheses cached) vs {theirs:.0f} us (every pair, as the pipeline does)",
        f"- {DUPLICATED_TEXTS} texts sent twice in one batch: {twice:.1f} s, once: {once:.1f} s "
        "(identical texts are scored once)",
    ]
    if args.profile:
        # The profiler sees torch's operators: the model in torch is what it profiles.
        in_torch = next((v for v in found if v.name == TORCH), default)
        lines += ["", *profile(in_torch, load.texts, load, flops)]
        # The default and the int8 opt-in, where the worker runs them in OpenVINO: the
        # worker's own export, compiled again with OpenVINO's counters on.
        for variant in (default, next(v for v in found if v.name.startswith(INT8_OPT_IN))):
            if variant.classifier.info["runtime"] != "openvino":
                continue
            running = cast(OpenVinoForward, variant.classifier._forward_pass)
            forward = running.recompiled(profile=True)
            profiled = NLIClassifier(model_dir, tokenizer, config, forward)
            lines += [
                "",
                *profile_openvino(variant.name, profiled, forward, load.texts, load, flops),
            ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
