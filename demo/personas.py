"""What simulated users like: personas over the demo corpus's style axes, tastes that depend
on the request (CONDITIONAL), or any function.

A taste is a function `(prompt, response) -> bool`. Users always dislike garbage (an answer
the demo corpus cannot read back: broken or unfinished, about another task, to the wrong
name), whatever their taste; `--judge module:function` plugs in any other taste under the
same rule.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from trainer.demo_model.corpus import NAMES, TASKS, Style, style_of

Taste = Callable[[str, str], bool]

# One per style axis and side; combine with "+" (e.g. "formal+short").
AXES: dict[str, Callable[[Style], bool]] = {
    "formal": lambda s: s.formal, "casual": lambda s: not s.formal,
    "short": lambda s: not s.long, "long": lambda s: s.long,
    "question": lambda s: s.question, "no-question": lambda s: not s.question,
    "name": lambda s: s.name, "no-name": lambda s: not s.name,
}

# Tastes that depend on the request: one style for some kinds of requests, another for the
# rest. An adapter must learn when, not only what.
ERRANDS = {TASKS[i][0] for i in (1, 2, 6, 12, 15, 20, 21, 23)}  # password, order, bill, passport...
ADVICE = {TASKS[i][0] for i in (4, 8, 11, 13, 14, 17, 19)}  # a book, guitar, sleep, a laptop...


def _task(prompt: str) -> str | None:
    return next((t[0] for t in TASKS if t[0] in prompt), None)


CONDITIONAL: dict[str, Callable[[str, Style], bool]] = {
    # formal for errands (an account, a bill, a passport), casual for everything else
    "formal-for-errands": lambda prompt, s: s.formal == (_task(prompt) in ERRANDS),
    # long (with the detail) when asked for advice, short otherwise
    "long-for-advice": lambda prompt, s: s.long == (_task(prompt) in ADVICE),
}
BUILT_IN = ["formal", "short", "question", "no-name", "formal+short", "casual+no-name", *CONDITIONAL]


def addressee(prompt: str) -> str | None:
    """The name the user gave in the prompt (the demo domain's requests all carry one)."""
    return next((n for n in NAMES if n in prompt), None)


def readable(prompt: str, response: str) -> Style | None:
    """The answer's style, or None when it is garbage: unreadable, about another task than
    the one asked, or addressed to someone else."""
    name = addressee(prompt)
    task = next((t for t in TASKS if t[0] in prompt), None)
    if name is None or task is None or (task[1] not in response and task[2] not in response):
        return None
    greeting = response.split(".")[0]
    if "," in greeting and not greeting.endswith(f", {name}"):
        return None
    return style_of(response, name)


@dataclass(frozen=True)
class Persona:
    name: str
    taste: Taste

    def likes(self, prompt: str, response: str) -> bool:
        return readable(prompt, response) is not None and bool(self.taste(prompt, response))


def persona(spec: str) -> Persona:
    """A built-in persona ("formal", "short+no-name") or "module:function" (any taste)."""
    if ":" in spec:
        module, _, function = spec.partition(":")
        taste = getattr(importlib.import_module(module), function, None)
        if not callable(taste):
            raise ValueError(f"{spec}: {function} is not a function of {module}")
        return Persona(spec, taste)
    if spec in CONDITIONAL:
        rule = CONDITIONAL[spec]

        def conditional(prompt: str, response: str) -> bool:
            style = readable(prompt, response)
            return style is not None and rule(prompt, style)

        return Persona(spec, conditional)
    axes = spec.split("+")
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise ValueError(f"unknown persona axis {unknown[0]!r}: use {', '.join(AXES)} (joined with +), "
                         f"{', '.join(CONDITIONAL)} or module:function")

    def taste(prompt: str, response: str) -> bool:
        style = readable(prompt, response)
        return style is not None and all(AXES[a](style) for a in axes)

    return Persona(spec, taste)
