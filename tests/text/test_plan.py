"""Goals parsed into topic, horizon, constraints and kind; plans laid out from them."""

from __future__ import annotations

import datetime as dt

import pytest

from bhiv_core.text.plan import PlanSource, build_plan, goal_terms, parse_goal

WEDNESDAY = dt.date(2026, 12, 2)


@pytest.mark.parametrize(
    ("text", "phrase", "days"),
    [
        ("Learn Spanish in 6 weeks", "in 6 weeks", 42),
        ("Plan how to learn the eight limbs of yoga in four weeks", "in four weeks", 28),
        ("Finish the report by Friday", "by Friday", 2),
        ("Finish the report by Wednesday", "by Wednesday", 7),  # next Wednesday, not today
        ("Get fit over the next 3 months", "over the next 3 months", 90),
        ("Ship the release by 2026-12-16", "by 2026-12-16", 14),
        ("Paint the fence this weekend", "this weekend", 2),
    ],
)
def test_horizons(text: str, phrase: str, days: float) -> None:
    goal = parse_goal(text, today=WEDNESDAY)
    assert goal.horizon is not None
    assert (goal.horizon.phrase, goal.horizon.days) == (phrase, days)


def test_topic_constraints_and_kind() -> None:
    goal = parse_goal(
        "Help me plan to launch our online store in 10 days with a budget of $500, 2 hours a day",
        today=WEDNESDAY,
    )
    assert goal.topic == "launch our online store"
    assert goal.constraints == ("with a budget of $500", "2 hours a day")
    assert goal.kind == "project"
    assert parse_goal("Plan how to learn Sanskrit").kind == "learning"
    assert parse_goal("Make a plan to sleep better").kind == "habit"
    assert parse_goal("Plan a picnic").kind == "general"
    assert parse_goal("Plan a picnic").horizon is None


def test_goal_terms_leave_out_planning_words() -> None:
    assert goal_terms(parse_goal("Plan how to learn the eight limbs of yoga in four weeks")) == [
        "eight",
        "limbs",
        "yoga",
    ]


def test_phases_follow_the_horizon() -> None:
    def periods(text: str) -> list[str]:
        plan = build_plan(parse_goal(text, today=WEDNESDAY))
        return [line.split(" - ")[0] for line in plan.splitlines() if " - " in line]

    assert periods("Learn Spanish in 6 weeks") == [f"Week {i}" for i in range(1, 7)]
    assert periods("Learn Spanish in 5 days") == [f"Day {i}" for i in range(1, 6)]
    assert periods("Learn Spanish in 10 days") == ["Days 1-2", "Days 3-5", "Days 6-8", "Days 9-10"]
    assert periods("Learn Spanish in 6 months") == [f"Month {i}" for i in range(1, 7)]
    assert periods("Learn Spanish") == [f"Phase {i}" for i in range(1, 5)]


def test_the_plan_uses_the_goal_and_cites_its_sources() -> None:
    goal = parse_goal("Learn pranayama in 3 weeks", today=WEDNESDAY)
    sources = [
        PlanSource(1, "Breath Control", "Pranayama is the practice of breath control.", "Yoga Basics"),
        PlanSource(2, "Alternate Nostril Breathing", "Close the right nostril and inhale.", "Yoga Basics"),
    ]
    plan = build_plan(goal, sources)
    assert plan.startswith("Plan: Learn pranayama.")
    assert "Breath Control" in plan and "[1]" in plan and "[2]" in plan
    assert "Sources: [1] Yoga Basics - Breath Control; [2] Yoga Basics - Alternate Nostril Breathing" in plan
    assert "pranayama" in build_plan(goal)  # without sources, the goal's own subject
