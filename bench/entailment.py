"""A synthetic entailment task on real texts, to train the fidelity proxy (bench.proxy).

A text's topics are the labels whose keyword lexicon it uses (a whole-word
match). Each training pair is a text and the hypothesis "This example is
{label}.": entailment when the label is one of the text's topics,
contradiction when it is not. Every text gives as many contradictions as
entailments, so the targets are balanced. The signal is learnable from
scratch in minutes (which words go with which label), and a model trained on
it gives confident, spread scores, unlike random weights.

No torch here: the task is plain data, tested on its own.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


def _lexicon(words: str) -> frozenset[str]:
    return frozenset(words.split())


# bench.workload's labels, each with words that say a text is about it.
LEXICONS: dict[str, frozenset[str]] = {
    "computers": _lexicon(
        "computer computers software program programs programmer programmers programming "
        "code bug bugs unix linux windows keyboard byte bytes hacker hackers disk cpu "
        "internet email compiler debug debugging algorithm network database printer "
        "server emacs kernel"
    ),
    "science": _lexicon(
        "science sciences scientist scientists scientific physics physicist chemistry "
        "biology experiment experiments theory atom atoms energy universe mathematics "
        "mathematician math equation research laboratory gravity electron molecule "
        "evolution einstein newton hypothesis"
    ),
    "politics": _lexicon(
        "politics political politician politicians government president congress senate "
        "senator vote votes voter voters election elections democracy democrat "
        "republican tax taxes parliament minister liberal conservative campaign"
    ),
    "food": _lexicon(
        "food eat eating ate dinner lunch breakfast cook cooking meal bread cheese meat "
        "wine beer coffee tea pizza soup cake chocolate fruit apple restaurant hungry "
        "kitchen diet vegetables chicken"
    ),
    "sports": _lexicon(
        "sport sports team teams baseball football basketball golf tennis soccer hockey "
        "player players coach ball race olympic athlete ski skiing fishing boxing "
        "championship league"
    ),
    "love": _lexicon(
        "love loves loved lover lovers kiss romance romantic heart marriage married marry "
        "wedding darling sweetheart passion affection girlfriend boyfriend wife "
        "husband"
    ),
    "medicine": _lexicon(
        "medicine doctor doctors hospital nurse patient patients disease sick illness "
        "health pill pills surgeon surgery cancer virus cure medical pain dentist "
        "psychiatrist therapy fever"
    ),
    "law": _lexicon(
        "law laws lawyer lawyers judge court jury crime criminal police prison jail "
        "attorney legal illegal sue trial justice guilty verdict arrest cop cops "
        "constitution"
    ),
}
TEMPLATE = "This example is {}."
# A text about more topics than this is too unspecific to teach anything.
MAX_TOPICS = 3
WORD = re.compile(r"[a-z]+")
# Multi-label: entailment more likely than contradiction.
DECISION_THRESHOLD = 0.5


@dataclass(frozen=True, slots=True)
class Example:
    """One premise/hypothesis pair and whether the hypothesis's label fits the premise."""

    premise: str
    label: str
    entailed: bool

    @property
    def hypothesis(self) -> str:
        """The pair's hypothesis, as the worker writes it for `label`."""
        return TEMPLATE.format(self.label)


def topics_of(text: str, lexicons: dict[str, frozenset[str]] = LEXICONS) -> tuple[str, ...]:
    """The labels whose lexicon has a word of `text`, in lexicon order."""
    words = set(WORD.findall(text.lower()))
    return tuple(label for label, lexicon in lexicons.items() if words & lexicon)


def usable(text: str) -> bool:
    """Whether `text` has between one and MAX_TOPICS topics."""
    return 1 <= len(topics_of(text)) <= MAX_TOPICS


def windows(text: str, radius: int) -> list[str]:
    """The words around each topic word of `text` (`radius` either side), as short texts.

    The curriculum's first stage: in a few words the topic word is most of the
    premise, so a model trained from scratch finds it much sooner.
    """
    words = text.split()
    every = frozenset().union(*LEXICONS.values())
    return [
        " ".join(words[max(0, i - radius) : i + radius + 1])
        for i, word in enumerate(words)
        if set(WORD.findall(word.lower())) & every
    ]


def split(texts: Iterable[str], held_out: int, seed: int) -> tuple[list[str], list[str]]:
    """The usable texts, shuffled by `seed`, cut into (training, held-out) texts."""
    chosen = sorted({text for text in texts if usable(text)})
    random.Random(seed).shuffle(chosen)
    if held_out >= len(chosen):
        raise ValueError(f"{len(chosen)} usable texts cannot leave {held_out} held out")
    return chosen[held_out:], chosen[:held_out]


def examples(texts: Sequence[str], seed: int) -> list[Example]:
    """Each usable text with each of its topics (entailed) and as many other labels
    (not entailed), drawn by `seed`; in a shuffled order."""
    rng = random.Random(seed)
    pairs: list[Example] = []
    for text in texts:
        topics = topics_of(text)
        if not 1 <= len(topics) <= MAX_TOPICS:
            continue
        others = [label for label in LEXICONS if label not in topics]
        pairs += [Example(text, label, True) for label in topics]
        pairs += [Example(text, label, False) for label in rng.sample(others, len(topics))]
    rng.shuffle(pairs)
    return pairs


def decision_accuracy(texts: Sequence[str], scores: Sequence[Mapping[str, float]]) -> float:
    """How often a multi-label score above DECISION_THRESHOLD says whether the label is one
    of the text's topics, over every text and label."""
    right = [
        (score > DECISION_THRESHOLD) == (label in topics_of(text))
        for text, by_label in zip(texts, scores, strict=True)
        for label, score in by_label.items()
    ]
    return sum(right) / len(right)


def top_label_accuracy(texts: Sequence[str], scores: Sequence[Mapping[str, float]]) -> float:
    """How often a text's highest-scoring label is one of its topics."""
    right = [
        max(by_label, key=by_label.__getitem__) in topics_of(text)
        for text, by_label in zip(texts, scores, strict=True)
    ]
    return sum(right) / len(right)
