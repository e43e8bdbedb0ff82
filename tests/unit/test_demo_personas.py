"""Simulated users' tastes: personas on the demo corpus's style axes, custom judges, and the
prompts they never send (held out for measuring)."""

from __future__ import annotations

import random

import pytest

from demo.personas import BUILT_IN, persona
from demo.population import COMBOS, IDEAL, REALISTIC, Habits, Population, Rated, parse_mix, prompt
from demo.report import live_rates, wilson
from trainer.demo_model.corpus import NAMES, TASKS, Style, make_answer, make_prompt

PROMPT = "Hi, I'm Alice. Can you help me book a table for dinner?"
TASK = 0  # the corpus's first task; the answers below are built from it


def answer(style: Style, name: str = "Alice") -> str:
    return make_answer(TASK, name, style, random.Random(0))


def test_each_persona_likes_its_style_and_nothing_else() -> None:
    formal_short = Style(formal=True, long=False, name=True, question=False)
    casual_long = Style(formal=False, long=True, name=False, question=True)
    assert persona("formal").likes(PROMPT, answer(formal_short))
    assert not persona("formal").likes(PROMPT, answer(casual_long))
    assert persona("short").likes(PROMPT, answer(formal_short))
    assert persona("no-name").likes(PROMPT, answer(casual_long))
    assert persona("question").likes(PROMPT, answer(casual_long))
    assert persona("formal+short").likes(PROMPT, answer(formal_short))
    assert not persona("formal+short").likes(PROMPT, answer(Style(True, True, True, False)))
    for spec in BUILT_IN:
        persona(spec)  # every built-in parses


def taste_for_questions(prompt: str, response: str) -> bool:
    """A custom judge as a user would plug it in: likes answers that ask back."""
    return response.rstrip().endswith("?")


def test_users_always_dislike_garbage_whatever_their_taste() -> None:
    wrong_name = answer(Style(True, False, True, False), name=next(n for n in NAMES if n != "Alice"))
    for spec in [*BUILT_IN, "tests.unit.test_demo_personas:taste_for_questions"]:
        assert not persona(spec).likes(PROMPT, wrong_name)
        assert not persona(spec).likes(PROMPT, "Certainly, Alice. I have")  # unfinished
        assert not persona(spec).likes(PROMPT, "")
    custom = persona("tests.unit.test_demo_personas:taste_for_questions")
    assert custom.likes(PROMPT, answer(Style(False, False, False, True)))
    assert not custom.likes(PROMPT, answer(Style(False, False, False, False)))


@pytest.mark.parametrize(("spec", "says"), [("polite", "unknown persona axis 'polite'"),
                                            ("formal+loud", "unknown persona axis 'loud'"),
                                            ("tests.unit.test_demo_personas:nope", "nope is not a function")])
def test_unknown_tastes_are_refused_with_the_reason(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        persona(spec)


def test_users_never_send_the_heldout_prompts() -> None:
    assert COMBOS["heldout"] and COMBOS["train"]
    assert not set(COMBOS["heldout"]) & set(COMBOS["train"])
    rng = random.Random(1)
    heldout_names = {f"{n}." for _, n in COMBOS["heldout"]}
    sent = {prompt(rng) for _ in range(2000)}
    measured = {prompt(rng, "heldout") for _ in range(500)}
    assert not sent & measured
    assert len(heldout_names) > 1


def test_wilson_interval_contains_the_rate_and_narrows_with_more_ratings() -> None:
    low, high = wilson(85, 100)
    assert low < 0.85 < high
    low_more, high_more = wilson(850, 1000)
    assert low < low_more < 0.85 < high_more < high
    assert wilson(0, 0) == (0.0, 1.0)


def test_an_answer_about_another_task_is_garbage() -> None:
    other_task = make_answer(1, "Alice", Style(True, False, True, False), random.Random(0))
    assert not persona("formal").likes(PROMPT, other_task)


def test_request_dependent_personas_want_a_style_for_some_requests_and_the_other_for_the_rest() -> None:
    from demo.personas import ERRANDS

    errand = next(t for t in range(len(TASKS)) if TASKS[t][0] in ERRANDS)
    leisure = next(t for t in range(len(TASKS)) if TASKS[t][0] not in ERRANDS)
    taste = persona("formal-for-errands")
    for task, formal_wanted in ((errand, True), (leisure, False)):
        asked = make_prompt(task, "Alice", random.Random(0))
        for formal in (True, False):
            said = make_answer(task, "Alice", Style(formal=formal, long=False, name=True, question=False),
                               random.Random(0))
            assert taste.likes(asked, said) == (formal == formal_wanted)


def test_rating_habits_are_sparse_one_sided_and_noisy_as_asked() -> None:
    rng = random.Random(1)
    n = 200_000
    liked = [REALISTIC.thumb(True, rng) for _ in range(n)]
    disliked = [REALISTIC.thumb(False, rng) for _ in range(n)]
    assert abs(sum(t is not None for t in liked) / n - 0.05) < 0.003
    assert abs(sum(t is not None for t in disliked) / n - 0.15) < 0.005
    given = [t for t in liked if t is not None]
    assert abs(given.count(False) / len(given) - 0.2) < 0.02  # a fifth of the thumbs say the opposite
    assert [IDEAL.thumb(x, rng) for x in (True, False)] == [True, False]
    with pytest.raises(ValueError):
        Habits(liked=1.5)


def test_a_mix_gives_each_end_user_one_persona_by_share() -> None:
    users = Population("http://unused", parse_mix("formal:3,casual:2"), users=40)
    tastes = [users.persona_of(i).name for i in range(40)]
    assert tastes.count("formal") == 24 and tastes.count("casual") == 16
    assert tastes == [users.persona_of(i).name for i in range(40)]  # sticky
    with pytest.raises(ValueError):
        parse_mix("formal")


def test_the_report_puts_true_and_observed_rates_side_by_side() -> None:
    rated = [Rated(0, "v1", "champion", liked=True, thumb=None, persona="formal"),
             Rated(0, "v1", "champion", liked=True, thumb=False, persona="formal"),
             Rated(0, "v1", "champion", liked=False, thumb=False, persona="casual"),
             Rated(0, "v1", "champion", liked=True, thumb=True, persona="casual")]
    rates = live_rates(rated)["v1"]
    assert (rates["true"]["liked"], rates["true"]["rated"]) == (3, 4)
    assert (rates["observed"]["liked"], rates["observed"]["rated"]) == (1, 3)
    assert rates["per_persona"]["formal"]["true"]["rate"] == 1.0
    assert rates["per_persona"]["formal"]["observed"]["rated"] == 1


def test_each_built_in_persona_declares_its_own_valid_segment() -> None:
    from adapters.segments import SEGMENT_RE
    from demo.population import segment_of

    names = [segment_of(persona(name)) for name in [*BUILT_IN, "casual"]]
    assert all(SEGMENT_RE.match(n) for n in names)
    assert len(set(names)) == len(names)
