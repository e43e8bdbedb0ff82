"""Human evaluation: an operator judges two adapter versions blind, side by side.

    loraloop adapters compare A B [--prompts 10] [--url http://127.0.0.1:8000] [--key KEY]

For each held-out prompt (prompts the training runs never see, trainer/data.py), both
versions answer through the gateway (pinned), and the two answers are shown as 1 and 2 in
a random order. The operator types 1, 2, t (tie), s (skip) or q (quit). A verdict is stored
as ratings of the two logged answers (the winner up, the loser down, rated by
`operator:<user>`), so it becomes a preference pair for training like any user's, and in
the audit trail, where `loraloop adapters show` sums the wins next to the gate's numbers.
"""

from __future__ import annotations

import argparse
import getpass
import json
import random
import sys
from typing import Any, TextIO

import httpx

from adapters import registry
from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.settings import StoreSettings
from trainer.admit import heldout_data


def answer(client: httpx.Client, version: str, prompt: Any) -> tuple[str, str]:
    """(completion id, text) of `version`'s answer to `prompt` (messages)."""
    resp = client.post("/v1/chat/completions", json={"model": version, "messages": prompt, "max_tokens": 128,
                                                     "temperature": 0})
    resp.raise_for_status()
    body = resp.json()
    return body["id"], body["choices"][0]["message"]["content"] or ""


def compare(client: httpx.Client, a: str, b: str, prompts: list[Any], rater: str, seed: int,
            ask: TextIO, show: TextIO) -> list[dict]:
    rng = random.Random(seed)
    verdicts = []
    for i, prompt in enumerate(prompts, 1):
        answers = {a: answer(client, a, prompt), b: answer(client, b, prompt)}
        order = [a, b]
        rng.shuffle(order)  # blind: the operator never learns which is which
        question = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
        show.write(f"\n[{i}/{len(prompts)}] {question}\n")
        for shown, version in enumerate(order, 1):
            show.write(f"  --- {shown} ---\n  {answers[version][1]}\n")
        show.write("better? 1 / 2 / t(ie) / s(kip) / q(uit): ")
        show.flush()
        choice = ask.readline().strip().lower()
        if choice in ("q", ""):
            break
        if choice not in ("1", "2", "t"):
            continue
        winner = None if choice == "t" else order[int(choice) - 1]
        if winner is not None:
            loser = b if winner == a else a
            for version, rating in ((winner, "up"), (loser, "down")):
                client.post("/v1/feedback", json={"id": answers[version][0], "rating": rating, "user": rater,
                                                  "comment": "adapters compare"}).raise_for_status()
        verdicts.append({"prompt": question, "winner": winner, "a": a, "b": b})
    return verdicts


def record(sessions, verdicts: list[dict], rater: str) -> None:  # type: ignore[no-untyped-def]
    """Each verdict into both versions' audit trail (what `adapters show` sums)."""
    with sessions.begin() as session:
        for v in verdicts:
            for version, other in ((v["a"], v["b"]), (v["b"], v["a"])):
                outcome = "tie" if v["winner"] is None else "win" if v["winner"] == version else "loss"
                registry.audit(session, "human_compare", rater, f"vs {other}", version=version,
                               numbers={"outcome": outcome, "prompt": v["prompt"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loraloop adapters compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--prompts", type=int, default=10, help="held-out prompts to judge")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway")
    parser.add_argument("--key", default="", help="an API key of the gateway (or LORALOOP_API_KEY)")
    parser.add_argument("--seed", type=int, default=None, help="answer order (default: random)")
    args = parser.parse_args(argv)
    import os

    settings = StoreSettings()
    engine = make_engine(settings.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    _, prompts = heldout_data(sessions, demo=not settings.base_model, n=args.prompts)
    key = args.key or os.environ.get("LORALOOP_API_KEY", "")
    rater = f"operator:{getpass.getuser()}"
    with httpx.Client(base_url=args.url, timeout=120, headers={"authorization": f"Bearer {key}"} if key else {}) \
            as client:
        verdicts = compare(client, args.a, args.b, prompts, rater, args.seed if args.seed is not None
                           else random.randrange(2**32), sys.stdin, sys.stderr)
    record(sessions, verdicts, rater)
    engine.dispose()
    wins = {x: sum(v["winner"] == x for v in verdicts) for x in (args.a, args.b)}
    print(json.dumps({"judged": len(verdicts), "wins": wins, "ties": sum(v["winner"] is None for v in verdicts)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
