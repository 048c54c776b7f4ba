"""The forward batches static int8 measures its activation ranges on.

OpenVINO's int8 (worker.nli.openvino_runtime) quantizes each product's input
with a scale fixed ahead of time, from the ranges the float32 model's
activations take on these batches. They are the worker's own: the texts in
TEXTS_FILE (written for this, of the kinds of events the worker tags: posts,
reviews, news, support requests, a few in German; 3 to 160 words) against
LABELS in the transformers default template, cut into forward batches as the
classifier cuts real ones (`RecordingForward` keeps them instead of running
them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import orjson
import torch

from worker.nli.base import Task
from worker.nli.forward import INPUT_IDS, Arrays

TEXTS_FILE = Path(__file__).with_name("int8_calibration.jsonl")
# Labels of different lengths and kinds, so that hypotheses of different lengths
# (and the padding of a batch of them) are measured.
LABELS = (
    "sports",
    "politics",
    "technology",
    "business and finance",
    "health",
    "entertainment",
    "travel",
    "a complaint",
)
TEMPLATE = "This example is {}."
TASK = Task(LABELS, TEMPLATE, multi_label=True)


def texts() -> list[str]:
    """The calibration texts, in the file's order."""
    return [orjson.loads(line)["text"] for line in TEXTS_FILE.read_bytes().splitlines()]


def digest(batches: Sequence[Arrays], *versions: str) -> str:
    """A digest of the batches and `versions` (of what quantizes on them): a different
    calibration makes a different int8 model."""
    hashed = hashlib.blake2b(digest_size=8)
    hashed.update(" ".join(versions).encode())
    for arrays in batches:
        for name in sorted(arrays):
            hashed.update(f"{name}{arrays[name].shape}".encode())
            hashed.update(arrays[name].tobytes())
    return hashed.hexdigest()


class RecordingForward:
    """A forward on the CPU that keeps the batches it is given and answers zero logits."""

    device = torch.device("cpu")
    precision = "float32"
    runtime = "calibration"

    def __init__(self, input_names: frozenset[str], num_labels: int) -> None:
        self.input_names = input_names
        self._num_labels = num_labels
        self.batches: list[Arrays] = []

    def __call__(self, arrays: Arrays) -> torch.Tensor:
        self.batches.append(arrays)
        return torch.zeros(len(arrays[INPUT_IDS]), self._num_labels)
