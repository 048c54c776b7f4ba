"""Long texts through the broker: chunked, scored as the pipeline scores each chunk, or
dead-lettered past `max_chunks`."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tests.integration.harness import make_settings, pipeline_scores, produce, read, running
from tests.integration.test_worker import fresh
from tests.texts import fortunes
from worker.nli.chunks import windows
from worker.nli.classifier import load_classifier

LABELS = ["computers", "food", "love", "politics", "sports"]
TEMPLATE = "This example is {}."
WINDOW, STRIDE, MAX_CHUNKS = 400, 64, 4
# tiny_bart_dir takes 1024 tokens: these premise lengths need 3 to 4 chunks of
# WINDOW, and the too-long one 5 or more.
CHUNKED_TOKENS = (1100, 1400)
TOO_LONG_TOKENS = 1800
LONG_TEXTS = 3
TOLERANCE = 1e-4


def premise_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def chunk_texts(tokenizer: PreTrainedTokenizerBase, text: str) -> list[str] | None:
    """Each chunk's text: the decoded premise token window, as the worker cuts it.

    None when a chunk's text does not tokenize back to its window (a window
    cut inside a word can): the pipeline would not see the worker's tokens.
    """
    ids = premise_ids(tokenizer, text)
    found = []
    for start, end in windows(len(ids), WINDOW, STRIDE):
        chunk = tokenizer.decode(ids[start:end], clean_up_tokenization_spaces=False)
        if premise_ids(tokenizer, chunk) != ids[start:end]:
            return None
        found.append(chunk)
    return found


def long_texts(tokenizer: PreTrainedTokenizerBase) -> tuple[list[str], str]:
    """Fortunes joined into texts of CHUNKED_TOKENS whose chunks round-trip, and one of
    TOO_LONG_TOKENS or more."""
    pool = iter(fortunes(1000, min_chars=200))
    low, high = CHUNKED_TOKENS
    texts: list[str] = []
    while len(texts) < LONG_TEXTS:
        text = ""
        while len(premise_ids(tokenizer, text)) < low:
            text = f"{text}\n\n{next(pool)}".strip()
        if len(premise_ids(tokenizer, text)) <= high and chunk_texts(tokenizer, text) is not None:
            texts.append(text)
    too_long = "\n\n".join(texts)
    assert len(premise_ids(tokenizer, too_long)) >= TOO_LONG_TOKENS
    return texts, too_long


@pytest.mark.parametrize("multi_label", [True, False])
def test_long_texts_are_chunked_like_the_pipeline_and_too_long_ones_dead_lettered(
    bootstrap_servers: str, tiny_bart_dir: Path, multi_label: bool
) -> None:
    source, sink, dlq = fresh("in", "out", "dlq", bootstrap_servers=bootstrap_servers)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bart_dir))
    texts, too_long = long_texts(tokenizer)
    [short] = fortunes(1, max_chars=200)
    events = [*texts, short, too_long]
    produce(
        bootstrap_servers,
        source,
        [orjson.dumps({"id": i, "text": text}) for i, text in enumerate(events)],
        headers=[[("trace", str(i).encode())] for i in range(len(events))],
    )
    topic = {
        "input": source,
        "output": sink,
        "dead_letter": dlq,
        "labels": LABELS,
        "multi_label": multi_label,
        "long_text": {
            "strategy": "chunk",
            "window": WINDOW,
            "stride": STRIDE,
            "aggregate": "max",
            "max_chunks": MAX_CHUNKS,
        },
    }
    settings = make_settings(
        bootstrap_servers, f"g-{uuid.uuid4().hex}", [topic], model={"name": str(tiny_bart_dir)}
    )
    with running(settings, load_classifier(str(tiny_bart_dir), "cpu", "float32")):
        outputs = read(bootstrap_servers, [sink, dlq], len(events))

    by_id = {int(o.json()["id"]): o for o in outputs}
    assert len(outputs) == len(events) == len(by_id)

    dead = by_id[len(events) - 1]
    assert dead.topic == dlq and dead.value == orjson.dumps(
        {"id": len(events) - 1, "text": too_long}
    )
    assert dead.headers["zsc.error.type"] == b"too_many_chunks"
    reason = (dead.headers["zsc.error.message"] or b"").decode()
    assert f"over long_text.max_chunks {MAX_CHUNKS}" in reason, reason
    assert dead.headers["trace"] == str(len(events) - 1).encode()

    whole = by_id[len(texts)].json()["classification"]
    assert "chunks" not in whole, "a text that fits is scored whole"
    [expected_whole] = pipeline_scores(str(tiny_bart_dir), [short], LABELS, TEMPLATE, multi_label)
    got_whole = dict(zip(whole["labels"], whole["scores"], strict=True))
    assert got_whole == pytest.approx(expected_whole, abs=TOLERANCE)

    for i, text in enumerate(texts):
        output = by_id[i]
        assert output.topic == sink and output.headers == {"trace": str(i).encode()}
        result = output.json()["classification"]
        chunks = chunk_texts(tokenizer, text)
        assert chunks is not None
        per_chunk = pipeline_scores(str(tiny_bart_dir), chunks, LABELS, TEMPLATE, multi_label)
        table = np.array([[scores[label] for label in LABELS] for scores in per_chunk])
        got = dict(zip(result["labels"], result["scores"], strict=True))
        for column, label in enumerate(LABELS):
            assert abs(got[label] - table[:, column].max()) <= TOLERANCE, (i, label)
        assert result["scores"] == sorted(result["scores"], reverse=True)
        assert result["chunks"]["count"] == len(chunks) >= 3
        assert result["chunks"]["aggregate"] == "max"
        ranges = [list(r) for r in windows(len(premise_ids(tokenizer, text)), WINDOW, STRIDE)]
        for column, label in enumerate(LABELS):
            k = ranges.index(result["chunks"]["token_ranges"][label])
            assert abs(table[k, column] - got[label]) <= TOLERANCE, "the chunk named gave it"
