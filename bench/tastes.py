"""Tastes for `loraloop demo --judge` that no built-in persona expresses (the system never
saw them): `--judge bench.tastes:formal_short_or_casual_question`."""

from demo.personas import readable


def formal_short_or_casual_question(prompt: str, response: str) -> bool:
    """Formal answers should be short; casual ones should ask something back."""
    style = readable(prompt, response)
    return style is not None and (not style.long if style.formal else style.question)
