"""The `classification` object of an output: ranked labels and scores, what is predicted
(thresholds, calibrated per label), label groups, raw logits and a long text's chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.nli.base import Scores, Task
from worker.nli.chunks import ChunkScores, TokenRange
from worker.nli.labels import LabelIds
from worker.routing import Route


def classification_of(
    route: Route,
    task: Task,
    scores: Scores,
    *,
    model: str,
    label_ids: LabelIds,
    source: tuple[str, int, int],
) -> dict[str, Any]:
    """The `classification` object: ranked labels and scores, predictions, groups, logits."""
    labels, ranked = rank(task.labels, scores.scores)
    template = task.hypothesis_template
    topic, partition, offset = source
    result: dict[str, Any] = {
        "labels": labels,
        "scores": ranked,
        "predicted": _predicted(route, labels, ranked, task.multi_label, route.threshold),
        "multi_label": task.multi_label,
        "model": model,
        "config_version": route.version,
        "hypothesis_template": template if isinstance(template, str) else list(template),
        "source": {"topic": topic, "partition": partition, "offset": offset},
    }
    if task.groups:
        groups = {}
        for group, group_scores, threshold in zip(
            task.groups, scores.groups, route.group_thresholds, strict=True
        ):
            g_labels, g_ranked = rank(group.labels, group_scores)
            groups[group.name] = {
                "labels": g_labels,
                "scores": g_ranked,
                "predicted": _predicted(route, g_labels, g_ranked, group.multi_label, threshold),
            }
        result["groups"] = groups
    if route.include_logits:
        result["logits"] = _logits(task, scores, label_ids)
    if scores.chunks is not None:
        result["chunks"] = _chunks(task, scores.chunks)
    return result


def _chunks(task: Task, chunks: ChunkScores) -> dict[str, Any]:
    """The chunk count and, under max, the premise tokens [start, end) each label's score came
    from."""
    result: dict[str, Any] = {"count": chunks.count, "aggregate": chunks.aggregate.value}
    if not chunks.best:
        return result

    def ranges(labels: Sequence[str], best: Sequence[int]) -> dict[str, TokenRange]:
        return {label: chunks.windows[k] for label, k in zip(labels, best, strict=True)}

    result["token_ranges"] = ranges(task.labels, chunks.best)
    if task.groups:
        result["groups"] = {
            group.name: ranges(group.labels, best)
            for group, best in zip(task.groups, chunks.group_best, strict=True)
        }
    return result


def _predicted(
    route: Route, labels: list[str], scores: list[float], multi_label: bool, threshold: float
) -> list[str]:
    if not multi_label:
        return labels[:1]
    return [
        label
        for label, score in zip(labels, scores, strict=True)
        if score >= route.thresholds.get(label, threshold)
    ]


def _logits(task: Task, scores: Scores, label_ids: LabelIds) -> dict[str, dict[str, list[float]]]:
    """Each label's raw entailment and contradiction logits, one per template."""
    row_of = {h: i for i, h in enumerate(task.hypotheses())}
    every = [*task.labels, *(label for group in task.groups for label in group.labels)]
    return {
        label: {
            "entailment": [scores.logits[row_of[h]][label_ids.entailment_id] for h in row],
            "contradiction": [scores.logits[row_of[h]][label_ids.contradiction_id] for h in row],
        }
        for label, row in zip(every, task.label_hypotheses(every), strict=True)
    }


def rank(labels: Sequence[str], scores: Sequence[float]) -> tuple[list[str], list[float]]:
    """Labels and scores sorted by descending score, as the transformers pipeline orders them."""
    order = sorted(range(len(labels)), key=lambda i: scores[i], reverse=True)
    return [labels[i] for i in order], [float(scores[i]) for i in order]
