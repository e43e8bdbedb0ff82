"""Simulated users: threads that ask the gateway through the official openai client, read
the answer and maybe send a thumb through /v1/feedback, as a person in an app would.

What a user thinks of an answer (their persona's taste) and what the system is told (a
thumb, given with the rating habits: sparse, one-sided, noisy) are kept apart: the first
is the measure, the second is all the loop learns from.

Prompts come from the demo domain (a task and the user's name). A fifth of the (task,
name) combinations are held out: users never send them, so no training run ever sees
them, and the demo measures each generation on them (`heldout_rate`).
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from dataclasses import dataclass, field

import openai

from demo.personas import Persona, persona
from trainer.demo_model.corpus import NAMES, TASKS, make_prompt

HELDOUT_SHARE = 0.2


def is_heldout(task: int, name: str) -> bool:
    digest = hashlib.sha256(f"{task}:{name}".encode()).digest()
    return digest[0] / 256 < HELDOUT_SHARE


COMBOS = {split: [(t, n) for t in range(len(TASKS)) for n in NAMES if is_heldout(t, n) == (split == "heldout")]
          for split in ("train", "heldout")}


def prompt(rng: random.Random, split: str = "train") -> str:
    task, name = rng.choice(COMBOS[split])
    return make_prompt(task, name, rng)


@dataclass(frozen=True)
class Habits:
    """How users rate: what the system gets, kept apart from what they think (the taste).

    `liked` and `disliked` are the shares of liked and of disliked answers that get a thumb
    at all; `noise` the share of given thumbs that say the opposite of what the user thinks
    (a slip, a mood, a disagreement with the persona's rule)."""

    liked: float = 1.0
    disliked: float = 1.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        if not all(0 <= x <= 1 for x in (self.liked, self.disliked, self.noise)):
            raise ValueError("rating shares and noise must be between 0 and 1")

    def thumb(self, liked: bool, rng: random.Random) -> bool | None:
        """The thumb the system gets for an answer the user liked or not (None: no thumb)."""
        if rng.random() >= (self.liked if liked else self.disliked):
            return None
        return liked != (rng.random() < self.noise)


IDEAL = Habits()
# Real users rate a few per cent of answers and complain more than they praise (BlenderBot 3's
# deployment: ~2.5% of utterances got feedback), and agree with each other on 63-77% of
# pairwise preferences (InstructGPT, Anthropic HH, AlpacaFarm): 20% of thumbs flipped.
REALISTIC = Habits(liked=0.05, disliked=0.15, noise=0.2)

Mix = list[tuple[Persona, float]]  # personas and their shares of the end users


def parse_mix(spec: str) -> Mix:
    """`formal:0.6,casual:0.4` -> [(formal, 0.6), (casual, 0.4)] (shares normalised)."""
    parts = []
    for item in spec.split(","):
        name, _, share = item.strip().rpartition(":")
        if not name or not share:
            raise ValueError(f"--mix wants persona:share items, e.g. formal:0.6,casual:0.4 (got {item!r})")
        parts.append((persona(name), float(share)))
    total = sum(share for _, share in parts)
    if total <= 0 or any(share < 0 for _, share in parts):
        raise ValueError("--mix shares must be positive")
    return [(p, share / total) for p, share in parts]


@dataclass
class Rated:
    at: float  # seconds since the population started
    version: str  # the adapter version that answered ("base" for none)
    arm: str  # "champion" or "canary" (the experiment's arm; "champion" outside experiments)
    liked: bool  # what the user thinks of it: the measure
    thumb: bool | None = None  # what the system was told (None: no thumb)
    persona: str = ""


@dataclass
class Population:
    """`users` end users sharing `concurrency` threads. Each end user keeps one persona of
    `mix` for the whole run (by share of the users) and rates with `habits`."""

    base_url: str
    mix: Mix
    users: int = 40
    concurrency: int = 6
    seed: int = 0
    max_tokens: int = 64
    regenerate: float = 0.0  # chance that a user who disliked an answer asks again (a DPO pair)
    habits: Habits = IDEAL
    # the app knows each user's persona and says so (X-Loraloop-Segment: adapters/segments.py)
    declare_segments: bool = False
    rated: list[Rated] = field(default_factory=list)  # every answer, thumbed or not
    failures: list[str] = field(default_factory=list)
    requests: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.started = time.monotonic()

    def persona_of(self, user: int) -> Persona:
        """User i's persona: the first `share` of the users get the first persona, and so on."""
        at, upto = (user + 0.5) / self.users, 0.0
        for taste, share in self.mix:
            upto += share
            if at < upto:
                return taste
        return self.mix[-1][0]

    def start(self) -> None:
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._user_loop, args=(self.seed * 1000 + i,), daemon=True,
                                      name=f"user-{i}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _user_loop(self, seed: int) -> None:
        rng = random.Random(seed)
        client = openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="demo", max_retries=0, timeout=120)
        while not self._stop.is_set():
            index = rng.randrange(self.users)
            text = prompt(rng)
            liked, regenerates = self._ask(client, rng, index, text, None)
            # a user who disliked the answer may press "regenerate": the app sends the same
            # prompt again, linked to the disliked answer (trainer.data makes it a DPO pair)
            if liked is False and regenerates and rng.random() < self.regenerate:
                self._ask(client, rng, index, text, regenerates)

    def _ask(self, client: openai.OpenAI, rng: random.Random, index: int, text: str,
             regenerates: str | None) -> tuple[bool | None, str]:
        """Asks, reads, maybe rates; (liked, answer id), liked None when the request failed."""
        user, taste = f"user-{index}", self.persona_of(index)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="default", user=user, messages=[{"role": "user", "content": text}],
                max_tokens=self.max_tokens, temperature=1.0,
                extra_body={"regenerates": regenerates} if regenerates else None,
                extra_headers={"x-loraloop-segment": segment_of(taste)} if self.declare_segments else None)
            answer = raw.parse()
            liked = taste.likes(text, answer.choices[0].message.content or "")
            thumb = self.habits.thumb(liked, rng)
            if thumb is not None:
                client.post("/feedback", cast_to=object,
                            body={"id": answer.id, "rating": "up" if thumb else "down", "user": user})
        except openai.OpenAIError as exc:  # every failure is counted: the demo promises none
            with self._lock:
                self.requests += 1
                self.failures.append(f"{type(exc).__name__}: {exc}"[:300])
            return None, ""
        with self._lock:
            self.requests += 1
            self.rated.append(Rated(time.monotonic() - self.started,
                                    raw.headers.get("x-loraloop-adapter-version") or "base",
                                    raw.headers.get("x-loraloop-arm") or "champion", liked, thumb, taste.name))
        return liked, answer.id

    def switch(self, taste: Persona) -> None:
        """The users' taste changes (the scripted scenario); the system is not told."""
        self.mix = [(taste, 1.0)]


def segment_of(taste: Persona) -> str:
    """The segment name an app would declare for users of `taste` (adapters/segments.py's rule)."""
    return (re.sub(r"[^a-z0-9_-]+", "-", taste.name.lower()).strip("-_") or "users")[:32]


def heldout_rate(base_url: str, model: str, persona: Persona, n: int = 300, seed: int = 7,
                 concurrency: int = 6) -> tuple[int, int]:
    """(liked, rated) for `n` answers of `model` (a version name, or the base's) to held-out
    prompts. Nothing is sent to /v1/feedback: these answers never train anything."""
    rng = random.Random(seed)
    prompts = [prompt(rng, "heldout") for _ in range(n)]
    liked = [0] * n

    def work(worker: int) -> None:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="demo", max_retries=2, timeout=120)
        for i in range(worker, n, concurrency):
            answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompts[i]}],
                                                    max_tokens=64, temperature=1.0, user="heldout-eval")
            liked[i] = persona.likes(prompts[i], answer.choices[0].message.content or "")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(liked), n


def heldout_rates(base_url: str, model: str, mix: Mix, n: int = 300) -> dict[str, tuple[int, int]]:
    """(liked, answers) per persona of `mix`, each judged by its TRUE taste on its share of
    `n` held-out prompts, and "all": their sum (the population's rate)."""
    rates = {taste.name: heldout_rate(base_url, model, taste, max(round(n * share), 1), seed=7 + i)
             for i, (taste, share) in enumerate(mix)}
    rates["all"] = (sum(liked for liked, _ in rates.values()), sum(m for _, m in rates.values()))
    return rates
