"""Fitting a topic's calibration on labelled events: a logit temperature and label thresholds.

Pure numpy on the model's raw logits: the model runs once per event, and every
candidate temperature is scored from those logits.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from worker.nli.base import Task
from worker.nli.labels import LabelIds

# The temperature is searched on a log scale within these bounds: outside them
# the scores are all but constant or all but hard 0/1.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
# Golden-section steps: the bracket shrinks by 0.618 a step, 60 reach ~1e-12.
SEARCH_STEPS = 60
# Bins of the expected calibration error, the usual choice.
ECE_BINS = 10
# Keeps log(0) out of the log-loss.
EPSILON = 1e-12
SPLIT_SEED = 20260601


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled event: its raw logits (rows: the task's hypotheses) and its true labels."""

    logits: npt.NDArray[np.float64]
    gold: frozenset[str]


@dataclass(frozen=True, slots=True)
class Quality:
    """How good a calibration is on a set of examples."""

    f1: float
    ece: float
    log_loss: float


@dataclass(frozen=True, slots=True)
class Calibration:
    """A fitted temperature and thresholds, with the held-out quality before and after."""

    temperature: float
    thresholds: dict[str, float]
    before: Quality
    after: Quality
    train_size: int
    holdout_size: int


def split(examples: Sequence[Example], holdout: float) -> tuple[list[Example], list[Example]]:
    """A deterministic shuffle, then the last `holdout` fraction held out (at least one)."""
    order = list(range(len(examples)))
    random.Random(SPLIT_SEED).shuffle(order)
    cut = len(order) - max(1, round(len(order) * holdout))
    if cut < 1:
        raise ValueError("too few labelled examples to hold some out")
    return [examples[i] for i in order[:cut]], [examples[i] for i in order[cut:]]


def _scores(task: Task, label_ids: LabelIds, examples: Sequence[Example], t: float) -> np.ndarray:
    tuned = dataclasses.replace(task, temperature=t)
    return np.array([tuned.score(e.logits, label_ids).scores for e in examples])


def _truth(task: Task, examples: Sequence[Example]) -> np.ndarray:
    return np.array([[label in e.gold for label in task.labels] for e in examples], dtype=float)


def log_loss(scores: np.ndarray, truth: np.ndarray, multi_label: bool) -> float:
    """Binary cross-entropy per label (multi-label) or categorical cross-entropy (single)."""
    p = np.clip(scores, EPSILON, 1 - EPSILON)
    if multi_label:
        return float(-np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p)))
    return float(-np.mean(np.sum(truth * np.log(p), axis=1)))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
    error = 0.0
    for b in range(ECE_BINS):
        members = bins == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Micro-averaged F1 of 0/1 predictions."""
    tp = float(np.sum(predicted * truth))
    fp = float(np.sum(predicted * (1 - truth)))
    fn = float(np.sum((1 - predicted) * truth))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def predictions(task: Task, scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """0/1 predictions: per-label thresholds (multi-label) or the top label (single)."""
    if task.multi_label:
        return (scores >= np.asarray(thresholds)).astype(float)
    top = np.zeros_like(scores)
    top[np.arange(len(scores)), scores.argmax(axis=1)] = 1.0
    return top


def quality(
    task: Task, scores: np.ndarray, truth: np.ndarray, thresholds: Sequence[float]
) -> Quality:
    """F1, expected calibration error and log-loss of scores against the truth."""
    if task.multi_label:
        confidence, correct = scores.ravel(), truth.ravel()
    else:
        confidence = scores.max(axis=1)
        correct = truth[np.arange(len(scores)), scores.argmax(axis=1)]
    return Quality(
        f1=f1(predictions(task, scores, thresholds), truth),
        ece=expected_calibration_error(confidence, correct),
        log_loss=log_loss(scores, truth, task.multi_label),
    )


def fit_temperature(loss: Callable[[float], float]) -> float:
    """The temperature of least loss, by golden-section search on log(temperature)."""
    ratio = (math.sqrt(5) - 1) / 2
    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(math.exp(a)), loss(math.exp(b))
    for _ in range(SEARCH_STEPS):
        if loss_a < loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(math.exp(a))
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(math.exp(b))
    return math.exp((low + high) / 2)


def fit_threshold(scores: np.ndarray, truth: np.ndarray, target_precision: float | None) -> float:
    """One label's threshold: best F1, or the lowest reaching `target_precision`."""
    candidates = np.unique(scores)
    best, best_value = 0.5, -1.0
    for threshold in candidates:
        predicted = scores >= threshold
        tp = float(np.sum(predicted & (truth == 1)))
        if target_precision is None:
            value = f1(predicted.astype(float), truth)
        else:
            precision = tp / max(float(predicted.sum()), 1.0)
            if precision < target_precision or tp == 0:
                continue
            value = -float(threshold)  # the lowest threshold that is precise enough
        if value > best_value:
            best, best_value = float(threshold), value
    return best


def calibrate(
    task: Task,
    label_ids: LabelIds,
    examples: Sequence[Example],
    *,
    holdout: float = 0.3,
    default_threshold: float = 0.5,
    current_thresholds: dict[str, float] | None = None,
    target_precision: float | None = None,
) -> Calibration:
    """Fit on part of the examples, report quality before (the task's current
    temperature and `current_thresholds`) and after on the rest."""
    train, held = split(examples, holdout)
    train_truth, held_truth = _truth(task, train), _truth(task, held)

    def train_loss(t: float) -> float:
        return log_loss(_scores(task, label_ids, train, t), train_truth, task.multi_label)

    temperature = fit_temperature(train_loss)
    thresholds: dict[str, float] = {}
    if task.multi_label:
        fitted = _scores(task, label_ids, train, temperature)
        thresholds = {
            label: fit_threshold(fitted[:, i], train_truth[:, i], target_precision)
            for i, label in enumerate(task.labels)
        }
    current = current_thresholds or {}
    plain = [current.get(label, default_threshold) for label in task.labels]
    tuned = [thresholds.get(label, default_threshold) for label in task.labels]
    before = _scores(task, label_ids, held, task.temperature)
    return Calibration(
        temperature=temperature,
        thresholds=thresholds,
        before=quality(task, before, held_truth, plain),
        after=quality(task, _scores(task, label_ids, held, temperature), held_truth, tuned),
        train_size=len(train),
        holdout_size=len(held),
    )
