"""The models a worker serves: one loaded classifier per distinct model, and each topic's.

A topic's model is its own `model` entry, else the top-level `model`
(`Settings.model_of`). Topics with the same model share one loaded
classifier; a model is named by its name in outputs, metrics and errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from config.settings import Settings
from worker.errors import ModelError
from worker.nli.base import Classifier

ClassifierLoader = Callable[[str, str, str, int | None], Classifier]
"""Loads a model as a classifier: name, device, dtype, and the padded-token budget of a
forward pass (None: the device's default)."""


def load_nli_classifier(
    name: str, device: str, dtype: str, max_batch_tokens: int | None
) -> Classifier:
    """The real loader: a transformers NLI model (torch is imported only for commands that
    score)."""
    from worker.nli.classifier import load_classifier

    return load_classifier(name, device, dtype, max_batch_tokens)


def forward_budget(settings: Settings) -> int | None:
    """The padded-token budget of a forward pass: a configured batching.max_tokens bounds
    each forward pass too; unset (None), each model takes its device's default."""
    batching = settings.batching
    return batching.max_tokens if "max_tokens" in batching.model_fields_set else None


class Models:
    """The loaded classifiers by model name, and which one scores each input topic.

    A topic not listed is scored by the `default` model (the top-level one).
    """

    def __init__(
        self,
        classifiers: Mapping[str, Classifier],
        topics: Mapping[str, str],
        default: str | None = None,
    ) -> None:
        unknown = {*topics.values(), default} - {None, *classifiers}
        if unknown:
            raise ValueError(f"topics name models that are not loaded: {sorted(map(str, unknown))}")
        self._classifiers = dict(classifiers)
        self._topics = dict(topics)
        self._default = default

    @classmethod
    def one(cls, classifier: Classifier) -> Models:
        """A single classifier that scores every topic."""
        return cls({classifier.model_name: classifier}, {}, classifier.model_name)

    @classmethod
    def load(
        cls,
        settings: Settings,
        load: ClassifierLoader,
        max_batch_tokens: int | None,
        top_level: Classifier | None = None,
    ) -> Models:
        """Load every model the topics use, each once, in the order the topics name them.

        `top_level`, when given, is the top-level model's classifier, already
        loaded: it serves every topic whose model is the top-level one, and a
        topic whose own model has its name. A model that fails raises
        ModelError naming the key and topic that asked for it.
        """
        classifiers: dict[str, Classifier] = {}
        if top_level is not None:
            classifiers[top_level.model_name] = top_level
        topics: dict[str, str] = {}
        for index, topic in enumerate(settings.topics):
            model = settings.model_of(topic)
            # The given classifier is the top-level model, whatever its name says.
            name = top_level.model_name if top_level and model == settings.model else model.name
            if name not in classifiers:
                key = "model" if topic.model is None else f"topics.{index}.model"
                try:
                    classifiers[name] = load(name, model.device, model.dtype, max_batch_tokens)
                except ModelError as error:
                    raise ModelError(
                        f"{key} (topic {topic.input!r}): model {name!r} failed to load: {error}"
                    ) from None
            topics[topic.input] = name
        # A top-level classifier no topic uses is not served.
        return cls({name: classifiers[name] for name in dict.fromkeys(topics.values())}, topics)

    def __iter__(self) -> Iterator[Classifier]:
        return iter(self._classifiers.values())

    @property
    def names(self) -> list[str]:
        """The models' names, in the order they were loaded."""
        return list(self._classifiers)

    def name_of(self, topic: str) -> str:
        """The name of the model that scores `topic`'s events."""
        name = self._topics.get(topic, self._default)
        if name is None:
            raise KeyError(f"no model scores topic {topic!r}")
        return name

    def of_topic(self, topic: str) -> Classifier:
        """The classifier that scores `topic`'s events."""
        return self._classifiers[self.name_of(topic)]

    def __getitem__(self, name: str) -> Classifier:
        return self._classifiers[name]

    def wrapped(self, wrap: Callable[[Classifier], Classifier]) -> Models:
        """These models, each classifier wrapped (e.g. in a result cache of its own)."""
        wrapped = {name: wrap(classifier) for name, classifier in self._classifiers.items()}
        return Models(wrapped, self._topics, self._default)
