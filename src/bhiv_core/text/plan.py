"""Plans from a stated goal: what it is, by when, under which constraints, in which phases.

:func:`parse_goal` reads a goal such as "Plan how to learn the eight limbs of yoga in four weeks,
30 minutes a day" into its topic ("learn the eight limbs of yoga"), its horizon (4 weeks, from
"in four weeks"; "by Friday" counts the days to Friday), its constraints ("30 minutes a day") and
its kind (learning, project, habit or general, from its verbs). :func:`build_plan` lays out phases
over the horizon (days, weeks or months), each a stage of that kind of work applied to the goal's
own subjects: the sections and key sentences of the knowledge passages given (cited by number),
else the parts and key phrases of the goal itself. Deterministic; linear in its inputs.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from bhiv_core.text.sentences import content_words
from bhiv_core.text.summarize import summarize

__all__ = ["Goal", "Horizon", "PlanSource", "build_plan", "goal_terms", "parse_goal"]

_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "a couple of": 2, "a few": 3,
    "fourteen": 14, "fifteen": 15, "twenty": 20, "thirty": 30,
}  # fmt: skip
_UNIT_DAYS = {"hour": 1 / 24, "day": 1, "week": 7, "fortnight": 14, "month": 30, "year": 365}
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBER = r"\d+|a couple of|a few|" + "|".join(sorted(_NUMBERS, key=len, reverse=True))
_SPAN = re.compile(
    rf"\b(?:in|within|over(?:\s+the\s+next)?|for|during(?:\s+the\s+next)?|the\s+next)\s+"
    rf"(?:the\s+next\s+)?({_NUMBER})\s+(hour|day|week|fortnight|month|year)s?\b",
    re.I,
)
_BY = re.compile(
    r"\b(?:by|before|until|till)\s+(?:this\s+|next\s+)?("
    + "|".join(_WEEKDAYS)
    + r"|tomorrow|tonight|the\s+end\s+of\s+(?:the\s+|this\s+|next\s+)?(?:day|week|month|year)"
    r"|next\s+(?:week|month|year)|\d{4}-\d{2}-\d{2})\b",
    re.I,
)
_NEXT = re.compile(r"\b(this|next)\s+(week|weekend|month|year)\b", re.I)
_CONSTRAINT = re.compile(
    r"\b(?:with(?:out)?|only|using|while|but|under|on\s+a\s+budget|budget\s+of|no\s+more\s+than|at\s+most|"
    r"at\s+least|max(?:imum)?|avoid(?:ing)?|except|no)\b[^,.;:!?\n]*"
    r"|\b(?:\d+|one|two|three|four|five|ten|fifteen|twenty|thirty|forty-five|an?)\s+"
    r"(?:hours?|minutes?|mins?|sessions?|days?|times?)\s+(?:a|an|per|each|every)\s+\w+"
    r"|[$€£₹]\s?\d[\d,]*(?:\.\d+)?\w*"
    r"|\bon\s+(?:weekends|weekdays|evenings|mornings)\b",
    re.I,
)
_LEAD = re.compile(
    r"^\s*(?:please\s+)?(?:(?:can|could|would)\s+you\s+)?(?:help\s+me\s+)?"
    r"(?:make|create|draw\s+up|write|give\s+me|build|prepare|suggest|draft)?\s*(?:me\s+)?(?:an?\s+)?"
    r"(?:(?:step[-\s]by[-\s]step|study|weekly|daily|detailed|simple|action|project)\s+)*"
    r"(?:plan|schedule|roadmap|timeline|itinerary)?\s*(?:(?:out|for|to|on|of|how)\s+)*(?:(?:how|way)\s+)?"
    r"(?:(?:i|we)\s+(?:can|could|should|will|want\s+to|need\s+to)\s+)?(?:to\s+)?[:\-–]?\s*",
    re.I,
)
_KINDS = (
    (
        "learning",
        re.compile(
            r"\b(?:learn\w*|stud\w+|master\w*|understand\w*|read\w*|revis\w+|exam\w*|course|practi[cs]e\w*|"
            r"memori[sz]\w*|teach\w*|lesson\w*)\b",
            re.I,
        ),
    ),
    (
        "habit",
        re.compile(
            r"\b(?:lose|gain|run\w*|exercis\w*|sleep\w*|meditat\w*|fit\w*|health\w*|diet\w*|habit\w*|quit\w*|"
            r"reduce\w*|walk\w*|yoga|weight|stress)\b",
            re.I,
        ),
    ),
    (
        "project",
        re.compile(
            r"\b(?:build\w*|launch\w*|ship\w*|creat\w+|develop\w*|write|writing|organi[sz]\w*|move|moving|"
            r"open\w*|start\w*|set\s+up|migrat\w*|renovat\w*|publish\w*|host\w*|event|release)\b",
            re.I,
        ),
    ),
)
_STAGES = {
    "learning": ("Survey and set up", "Study the core", "Practise", "Deepen", "Review and test yourself"),
    "habit": ("Take a baseline", "Start small", "Build the routine", "Increase gradually", "Consolidate"),
    "project": ("Define and scope", "Prepare", "Build", "Test and refine", "Launch and follow up"),
    "general": (
        "Clarify the outcome",
        "Gather what is needed",
        "Do the main work",
        "Check progress",
        "Finish",
    ),
}
_FIRST_STEPS = {
    "learning": "list what {object} covers, gather one good source, and fix a regular study slot",
    "habit": "note where you stand today and pick the smallest version of {object} you can repeat",
    "project": "write down what done looks like for {object}, its parts, and what or whom you need",
    "general": "write down what success means for {object} and the first three actions",
}
_MIDDLE_STEPS = {
    "Study the core": "work through {s}: read it, then summarise it in your own words",
    "Practise": "practise {s}: exercises, flash cards, or explaining it aloud",
    "Deepen": "go further into {s}: harder material and how the parts connect",
    "Start small": "do {s} briefly, at the same time each day",
    "Build the routine": "keep {s} on a fixed schedule and log each session",
    "Increase gradually": "add about a tenth to {s} when the last stretch felt manageable",
    "Prepare": "gather the materials, tools and people for {s}",
    "Build": "make {s}, the riskiest part first",
    "Test and refine": "try {s} on a small scale and fix what fails",
    "Gather what is needed": "collect what {s} needs",
    "Do the main work": "carry out {s}",
    "Check progress": "compare {s} with the outcome you set and adjust",
}
_LAST_STEPS = {
    "learning": "recall {subjects} from memory, check against your sources, and fill the gaps",
    "habit": "keep {object} going without reminders and write down what to carry forward",
    "project": "finish {object}, review what worked, and list what remains",
    "general": "complete {object} and review the result against what success meant",
}
_GENERIC = frozenset(
    "plan planning learn learning study week weeks month months day days year years goal want need "
    "help make create get start able better good way step steps".split()
)


@dataclass(frozen=True, slots=True)
class Horizon:
    """When the goal is due: the phrase as written and its length in days (None when unknown)."""

    phrase: str
    days: float | None


@dataclass(frozen=True, slots=True)
class Goal:
    """A parsed goal: its topic, horizon, constraints and kind (learning, habit, project, general)."""

    text: str
    topic: str
    horizon: Horizon | None
    constraints: tuple[str, ...]
    kind: str


@dataclass(frozen=True, slots=True)
class PlanSource:
    """A passage the plan may draw on: its section title and text (cited as ``[number]``)."""

    number: int
    section: str
    text: str
    title: str = ""
    sentences: list[str] = field(default_factory=list)


def _number(word: str) -> int:
    word = re.sub(r"\s+", " ", word.lower())
    return int(word) if word.isdigit() else _NUMBERS.get(word, 1)


def _deadline(match: re.Match[str], today: dt.date) -> float | None:
    target = re.sub(r"\s+", " ", match.group(1).lower())
    if target in _WEEKDAYS:
        return float((_WEEKDAYS.index(target) - today.weekday() - 1) % 7 + 1)
    if target in ("tomorrow",):
        return 1.0
    if target == "tonight":
        return 0.5
    if target.startswith("next "):
        return float(_UNIT_DAYS[target.split()[-1]] * 1.5)
    if target.startswith("the end of"):
        unit = target.split()[-1]
        if unit == "day":
            return 0.5
        if unit == "week":
            return float(7 - today.weekday())
        if unit == "month":
            following = (today.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
            return float((following - today).days)
        return float((dt.date(today.year, 12, 31) - today).days + 1)
    try:
        return float(max(1, (dt.date.fromisoformat(target) - today).days))
    except ValueError:
        return None


def parse_goal(text: str, *, today: dt.date | None = None) -> Goal:
    """Reads the topic, horizon, constraints and kind of the goal stated in ``text``."""
    today = today or dt.datetime.now(dt.UTC).date()
    stated = " ".join(text.split())
    horizon = None
    removed: list[tuple[int, int]] = []
    span = _SPAN.search(stated)
    if span:
        horizon = Horizon(span.group(0), _number(span.group(1)) * _UNIT_DAYS[span.group(2).lower()])
        removed.append(span.span())
    else:
        by = _BY.search(stated)
        if by:
            horizon = Horizon(by.group(0), _deadline(by, today))
            removed.append(by.span())
        else:
            upcoming = _NEXT.search(stated)
            if upcoming:
                unit = upcoming.group(2).lower()
                days = 2.0 if unit == "weekend" else float(_UNIT_DAYS[unit])
                horizon = Horizon(upcoming.group(0), days)
                removed.append(upcoming.span())
    constraints = []
    for found in _CONSTRAINT.finditer(stated):
        if any(found.start() < end and start < found.end() for start, end in removed):
            continue
        phrase = found.group(0).strip()
        if len(phrase.split()) >= 2 or phrase[:1] in "$€£₹":
            constraints.append(phrase)
            removed.append(found.span())
    topic = stated
    for start, end in sorted(removed, reverse=True):
        topic = topic[:start] + topic[end:]
    topic = _LEAD.sub("", topic, count=1)
    topic = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(topic.split())).strip(" ,.;:!?-")
    topic = topic or stated
    kind = next((name for name, verbs in _KINDS if verbs.search(topic)), "general")
    return Goal(stated, topic, horizon, tuple(constraints), kind)


def goal_terms(goal: Goal) -> list[str]:
    """The goal's subject words (no stop words, no planning words), to search and to check relevance."""
    return [w for w in dict.fromkeys(content_words(goal.topic)) if w not in _GENERIC]


def _periods(horizon: Horizon | None) -> list[str]:
    """Labels of the plan's phases over the horizon."""
    days = horizon.days if horizon else None
    if days is None:
        return [f"Phase {i}" for i in range(1, 5)]
    if days <= 1:
        return ["First", "Next", "Then", "Finally"]
    if days <= 14:
        count = max(2, math.ceil(days))
        return [f"Day {d}" for d in range(1, count + 1)] if count <= 5 else _ranges("Days", count, 4)
    if days <= 7 * 12:
        weeks = math.ceil(days / 7)
        return [f"Week {w}" for w in range(1, weeks + 1)] if weeks <= 8 else _ranges("Weeks", weeks, 6)
    months = math.ceil(days / 30)
    return [f"Month {m}" for m in range(1, months + 1)] if months <= 12 else _ranges("Months", months, 6)


def _ranges(unit: str, total: int, groups: int) -> list[str]:
    edges = [round(i * total / groups) for i in range(groups + 1)]
    return [f"{unit} {edges[i] + 1}-{edges[i + 1]}" for i in range(groups)]


_VERB = re.compile(r"^(?:to\s+)?([a-z]+)\s+(?=\S)", re.I)


def _object(goal: Goal) -> str:
    """The goal's topic without its leading verb ("learn yoga" → "yoga"), when it has one."""
    verb = _VERB.match(goal.topic)
    if verb and any(v.match(verb.group(1)) for _, v in _KINDS) and len(goal.topic) > verb.end():
        return goal.topic[verb.end() :]
    return goal.topic


def _subjects(goal: Goal, sources: Sequence[PlanSource]) -> list[tuple[str, str, int | None]]:
    """What the middle phases work on: (subject, detail, source number), in order."""
    found: list[tuple[str, str, int | None]] = []
    for source in sources:
        picked = source.sentences or summarize(source.text, length=1).sentences
        detail = " ".join(" ".join(p.split()) for p in picked[:1])
        found.append((source.section or source.title or "the source", detail, source.number))
    if found:
        return found
    subject = _object(goal)
    parts = [p.strip() for p in re.split(r",|\band\b|\bthen\b|;", subject) if p.strip()]
    if len(parts) >= 2:
        return [(part, "", None) for part in parts]
    return [(subject, "", None)]


def build_plan(goal: Goal, sources: Sequence[PlanSource] = ()) -> str:
    """The plan for ``goal`` as text: horizon, constraints, one line per phase, sources cited by number."""
    periods = _periods(goal.horizon)
    stages = _STAGES[goal.kind]
    subjects = _subjects(goal, sources)
    lines = [f"Plan: {goal.topic}."]
    if goal.horizon:
        length = f"about {goal.horizon.days:g} days" if goal.horizon.days is not None else "a date to confirm"
        lines.append(f'Horizon: {length} ("{goal.horizon.phrase}"), in {len(periods)} phases.')
    else:
        lines.append("Horizon: none stated; the phases below can be paced as you choose.")
    lines.append("Constraints: " + ("; ".join(goal.constraints) if goal.constraints else "none stated") + ".")
    lines.append("")
    subject = _object(goal)
    count = len(periods)
    middle = list(range(1, count - 1)) if count >= 3 else list(range(1, count))
    names = [name for name, _, _ in subjects]
    for index, period in enumerate(periods):
        if index == 0:
            stage = stages[0]
            work = _FIRST_STEPS[goal.kind].format(object=subject)
            if goal.constraints:
                work += f" (within: {goal.constraints[0]})"
        elif index not in middle:
            stage = stages[-1]
            work = _LAST_STEPS[goal.kind].format(object=subject, subjects=", ".join(names[:4]))
        else:
            at = middle.index(index)
            stage = stages[1 + at * (len(stages) - 2) // len(middle)]
            share = subjects[at * len(subjects) // len(middle) : (at + 1) * len(subjects) // len(middle)]
            share = share or [subjects[at % len(subjects)]]
            work = _MIDDLE_STEPS[stage].format(s=" and ".join(name for name, _, _ in share))
            details = [f"{detail.rstrip('.')} [{number}]" for _, detail, number in share if detail and number]
            if details:
                work += ". " + ". ".join(details)
        lines.append(f"{period} - {stage}: {work}.")
    if sources:
        lines.append("")
        lines.append(
            "Sources: "
            + "; ".join(
                f"[{s.number}] " + " - ".join(dict.fromkeys(p for p in (s.title, s.section) if p))
                for s in sources
            )
        )
    return "\n".join(lines)
