"""The demo base model answers coherently in every style it was taught, and without a style
request it varies, so that user preferences have something to select from."""

from __future__ import annotations

import itertools
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.settings import DEMO_MODEL_NAME
from tests.integration.conftest import LiveGateway
from trainer.demo_model.corpus import NAMES, TASKS, Style, make_prompt, style_of

pytestmark = pytest.mark.integration


def test_follows_every_requested_style(gateway: LiveGateway) -> None:
    client, rng = gateway.sdk(), random.Random(7)
    # prompts drawn here, not in the threads: a shared rng would give each run other prompts
    cases = [(Style(*axes), name, make_prompt(rng.randrange(len(TASKS)), name, rng))
             for axes in itertools.product([True, False], repeat=4) for _ in range(2)
             for name in [rng.choice(NAMES)]]

    def answer(case: tuple[Style, str, str]) -> str:
        style, _, prompt = case
        messages = [{"role": "system", "content": style.describe()}, {"role": "user", "content": prompt}]
        out = client.chat.completions.create(model=DEMO_MODEL_NAME, messages=messages,
                                             max_tokens=64, temperature=0)
        return out.choices[0].message.content or ""

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(answer, cases))
    missed = [(case[0].describe(), text) for case, text in zip(cases, answers, strict=True)
              if style_of(text, case[1]) != case[0]]
    assert not missed, missed


def test_unrequested_style_varies_on_every_axis(gateway: LiveGateway) -> None:
    client, rng = gateway.sdk(), random.Random(11)
    styles = []
    for _ in range(6):
        name, task = rng.choice(NAMES), rng.randrange(len(TASKS))
        out = client.chat.completions.create(
            model=DEMO_MODEL_NAME, messages=[{"role": "user", "content": make_prompt(task, name, rng)}],
            max_tokens=64, temperature=1.0, n=12, seed=rng.randrange(1 << 30))
        styles += [style_of(c.message.content or "", name) for c in out.choices]
    well_formed = [s for s in styles if s is not None]
    assert len(well_formed) >= 0.85 * len(styles)
    for axis in ("formal", "long", "name", "question"):
        share = sum(getattr(s, axis) for s in well_formed) / len(well_formed)
        assert 0.2 <= share <= 0.8, f"{axis} share {share:.2f}: no room left to learn a preference"
