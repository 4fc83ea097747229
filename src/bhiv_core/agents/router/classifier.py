"""The orchestrator's router: which of the twelve agents answers a request, with what confidence.

A linear classifier reads the query: TF-IDF over word 1-2 grams and ``char_wb`` 2-5 grams (which
tolerate typos and inflections), a :class:`~sklearn.svm.LinearSVC`, and temperature scaling fitted
on out-of-fold scores (:class:`~sklearn.calibration.CalibratedClassifierCV`, ``method="temperature"``)
so its probabilities are calibrated: of the queries routed with confidence 0.8, about 80% are
routed right (the tests measure the expected calibration error on the held-out set). It is trained
from the labelled examples of ``intents.tsv`` when a :class:`Router` is built (a fraction of a
second, deterministic: fixed folds and seeds), so no model file is shipped or downloaded.

Routing, in order:

1. An image attachment goes to ``image`` and an audio one to ``audio`` (only they can read one),
   whatever the query says; confidence 1. The first attachment decides, as ``Answer.input_type``
   reports it.
2. A PDF or text attachment restricts the choice to what can work on a document (the summarizer,
   the text agent's four intents, the content agent), with the classifier's probabilities (not
   renormalised). No query, or a confidence below the floor, goes to the summarizer.
3. Otherwise the probabilities of each agent's intents are added up; the most probable agent wins
   with its most probable intent, and its summed probability is the confidence.
4. A confidence below ``min_confidence`` (``BHIV_ROUTER_MIN_CONFIDENCE``), or a query none of whose
   words the router has seen (or only stop words, unless for ``qna``: "how are you" is small talk,
   "the" is no topic), goes to the general agent ``qna`` with intent ``question`` (which
   searches the whole knowledge base, the platform's policies included), never to the runner-up;
   ``Route.fallback`` says so and ``Route.confidence`` keeps the probability of the guess refused.

Greetings and small talk are intents of ``qna``. A query longer than :data:`MAX_ROUTED_CHARS` is read
as its first and last sentences, which bounds the cost of routing a long one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Final

from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from bhiv_core.agents.base import AGENT_INTENTS, InputType
from bhiv_core.runtime.config import Settings

__all__ = [
    "DEFAULT_MIN_CONFIDENCE",
    "DOCUMENT_INTENTS",
    "FALLBACK_AGENT",
    "FALLBACK_INTENT",
    "MAX_ROUTED_CHARS",
    "Example",
    "Route",
    "Router",
    "load_examples",
    "min_confidence_setting",
    "routed_text",
    "training_examples",
]

DEFAULT_MIN_CONFIDENCE: Final = 0.4
"""The confidence under which a query goes to the general agent (``BHIV_ROUTER_MIN_CONFIDENCE``).

Chosen on the held-out set (tests/agents/test_router.py prints routing accuracy for floors 0.2-0.8):
the highest floor with the best held-out routing accuracy (0.973 from 0.2 to 0.4; 0.969 at 0.5,
0.949 at 0.8, as more queries the classifier had right go to the general agent). Gibberish goes to
``qna`` whatever the floor: its words are unknown.
"""

FALLBACK_AGENT: Final = "qna"
"""Where a low-confidence query goes: the general agent, answering from the whole knowledge base."""

FALLBACK_INTENT: Final = "question"

DOCUMENT_INTENTS: Final = (
    "summarize",
    "translate",
    "rewrite",
    "extract_keywords",
    "detect_language",
    "social_post",
)
"""What a request with a PDF or text attachment may ask for; ``summarize`` first: the default."""

MAX_ROUTED_CHARS: Final = 300
"""A longer query is read as its first and last sentences (each within 200 characters).

What is asked is said at the start ("Summarise this: ...") or at the end ("... Translate that into
Hindi"); the text in between would only dilute it. It also bounds the cost of routing any query.
"""

_EDGE_CHARS: Final = 200
_SENTENCE_END: Final = re.compile(r"[.:;?!\n]")

_AGENT_OF: Final = {intent: agent for agent, intents in AGENT_INTENTS.items() for intent in intents}
_WORD: Final = re.compile(r"(?u)\b\w\w+\b")
_SEED: Final = 0


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled query of a training or evaluation set."""

    intent: str
    text: str


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes.

    Attributes:
        agent: One of the twelve agent ids of :data:`~bhiv_core.agents.base.AGENT_INTENTS`.
        intent: One of that agent's intents.
        confidence: The calibrated probability, 0-1, that the classifier's best guess is right (the
            summed probability of the agent's intents); 1 when an attachment decides alone. For a
            fallback, the probability of the guess that was refused.
        fallback: True when the confidence was too low (or the words unknown) and the request went
            to the general agent (or, with a document attached, to the summarizer).

    """

    agent: str
    intent: str
    confidence: float
    fallback: bool = False


def routed_text(query: str) -> str:
    """What the router reads of ``query``: all of it, or its first and last sentences when long."""
    if len(query) <= MAX_ROUTED_CHARS:
        return query
    head = query[:_EDGE_CHARS]
    end = _SENTENCE_END.search(head)
    first = head[: end.end()] if end else head
    tail = query[-_EDGE_CHARS:].rstrip(".:;?!\n \t")
    ends = list(_SENTENCE_END.finditer(tail))
    last = tail[ends[-1].end() :] if ends else tail
    return f"{first.strip()} {last.strip()}"


def load_examples(lines: Iterable[str], *, source: str = "examples") -> list[Example]:
    """Parses ``intent<TAB>text`` lines; ``#`` comments and blank lines are skipped.

    Raises:
        ValueError: A line is malformed or names an intent that no agent handles.

    """
    examples = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        intent, sep, text = line.partition("\t")
        if not sep or not text.strip():
            raise ValueError(f"{source}:{number}: expected intent<TAB>text")
        if intent not in _AGENT_OF:
            raise ValueError(f"{source}:{number}: unknown intent {intent!r}")
        examples.append(Example(intent, text.strip()))
    return examples


def training_examples() -> list[Example]:
    """The shipped training set (``intents.tsv`` beside this module)."""
    text = resources.files(__package__).joinpath("intents.tsv").read_text(encoding="utf-8")
    return load_examples(text.splitlines(), source="intents.tsv")


def min_confidence_setting(settings: Settings) -> float:
    """``BHIV_ROUTER_MIN_CONFIDENCE``: a number in (0, 1], default :data:`DEFAULT_MIN_CONFIDENCE`.

    Raises:
        ConfigError: The value is not a number in (0, 1].

    """

    def parse(raw: str) -> float:
        value = float(raw)
        if not 0 < value <= 1:
            raise ValueError(raw)
        return value

    return settings.get("ROUTER_MIN_CONFIDENCE", DEFAULT_MIN_CONFIDENCE, parse, "a number in (0, 1]")


def _model() -> Pipeline:
    """The untrained pipeline: word and character TF-IDF into a temperature-calibrated linear SVM."""
    features = FeatureUnion(
        [
            ("words", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        ]
    )
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=_SEED)
    classifier = CalibratedClassifierCV(
        LinearSVC(C=1.0, random_state=_SEED), method="temperature", cv=folds, ensemble=False
    )
    return Pipeline([("features", features), ("classifier", classifier)])


class Router:
    """Routes a query and its attachments to an agent; trained on construction (see the module doc).

    Building takes a fraction of a second of CPU (build it once, off the event loop); routing only
    reads the trained model, so one router serves concurrent requests and threads.

    Args:
        min_confidence: Below this confidence a query goes to the general agent.
        examples: The training set; the shipped ``intents.tsv`` when None.

    Attributes:
        min_confidence: As given.
        training_seconds: How long training took (wall clock).
        intents: The intent labels, in the order of the model's probability columns.

    """

    def __init__(
        self, min_confidence: float = DEFAULT_MIN_CONFIDENCE, examples: Sequence[Example] | None = None
    ):
        if not 0 < min_confidence <= 1:
            raise ValueError(f"min_confidence must be in (0, 1], got {min_confidence}")
        examples = training_examples() if examples is None else list(examples)
        started = time.perf_counter()
        self._model = _model().fit([e.text for e in examples], [e.intent for e in examples])
        self.training_seconds = time.perf_counter() - started
        self.min_confidence = min_confidence
        self.intents: tuple[str, ...] = tuple(str(c) for c in self._model.classes_)
        words = self._model.named_steps["features"].transformer_list[0][1]
        self._vocabulary: frozenset[str] = frozenset(words.vocabulary_)
        agents = sorted({_AGENT_OF[i] for i in self.intents})
        self._agents = tuple(agents)
        # Columns of each agent's intents, to sum their probabilities.
        self._columns = {a: [k for k, i in enumerate(self.intents) if _AGENT_OF[i] == a] for a in agents}

    def probabilities(self, query: str) -> dict[str, float]:
        """The calibrated probability of each intent for ``query`` (see :func:`routed_text`)."""
        row = self._model.predict_proba([routed_text(query)])[0]
        return {intent: float(p) for intent, p in zip(self.intents, row, strict=True)}

    def known_words(self, query: str) -> tuple[int, int]:
        """How many words of ``query`` (as routed) the router saw in training: all, and stop words aside."""
        known = [w for w in _WORD.findall(routed_text(query).lower()) if w in self._vocabulary]
        return len(known), sum(1 for w in known if w not in ENGLISH_STOP_WORDS)

    def route(self, query: str, attachment_types: Sequence[InputType] = ()) -> Route:
        """Chooses the agent for ``query`` and the types of its attachments, in request order.

        Args:
            query: The query text; may be empty when there are attachments.
            attachment_types: The detected type of each attachment (UNSPECIFIED ones are ignored).

        Returns:
            The route, never a runner-up guess: a low confidence goes to the general agent.

        """
        query = query.strip()
        types = [t for t in attachment_types if t != InputType.UNSPECIFIED]
        primary = types[0] if types else None
        if primary == InputType.IMAGE:
            return Route("image", "describe_image", 1.0)
        if primary == InputType.AUDIO:
            return Route("audio", "transcribe_audio", 1.0)
        if primary in (InputType.PDF, InputType.TEXT):
            return self._route_document(query)
        if not query:
            return Route(FALLBACK_AGENT, FALLBACK_INTENT, 0.0, fallback=True)
        probabilities = self.probabilities(query)
        by_agent = {a: sum(probabilities[self.intents[k]] for k in cols) for a, cols in self._columns.items()}
        agent = max(self._agents, key=lambda a: by_agent[a])
        confidence = min(1.0, by_agent[agent])
        known, topical = self.known_words(query)
        # No known word: gibberish. Only stop words: no topic ("the"), fine for "how are you" alone.
        if confidence < self.min_confidence or not known or (not topical and agent != FALLBACK_AGENT):
            return Route(FALLBACK_AGENT, FALLBACK_INTENT, confidence, fallback=True)
        intent = max(AGENT_INTENTS[agent], key=lambda i: probabilities.get(i, 0.0))
        return Route(agent, intent, confidence)

    def _route_document(self, query: str) -> Route:
        """A request with a PDF or text attachment: what works on a document, else the summarizer."""
        if not query:
            return Route("summarizer", "summarize", 1.0)
        probabilities = self.probabilities(query)
        by_agent: dict[str, float] = {}
        for intent in DOCUMENT_INTENTS:
            by_agent[_AGENT_OF[intent]] = by_agent.get(_AGENT_OF[intent], 0.0) + probabilities.get(
                intent, 0.0
            )
        agent = max(by_agent, key=lambda a: by_agent[a])
        confidence = min(1.0, by_agent[agent])
        # Not renormalised: "what does this say" is mostly an image question, and a document intent
        # that takes a sliver of the probability is not a confident route; the summarizer is.
        if confidence < self.min_confidence:
            return Route("summarizer", "summarize", confidence, fallback=True)
        intent = max(
            (i for i in DOCUMENT_INTENTS if _AGENT_OF[i] == agent), key=lambda i: probabilities.get(i, 0.0)
        )
        return Route(agent, intent, confidence)
