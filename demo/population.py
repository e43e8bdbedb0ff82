"""Simulated users: threads that ask the gateway through the official openai client, read
the answer and send a thumb through /v1/feedback, as a person in an app would.

Prompts come from the demo domain (a task and the user's name). A fifth of the (task,
name) combinations are held out: users never send them, so no training run ever sees
them, and the demo measures each generation on them (`heldout_rate`).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass, field

import openai

from demo.personas import Persona
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


@dataclass
class Rated:
    at: float  # seconds since the population started
    version: str  # the adapter version that answered ("base" for none)
    arm: str  # "champion" or "canary" (the experiment's arm; "champion" outside experiments)
    liked: bool


@dataclass
class Population:
    """`users` end users sharing `concurrency` threads; every answer is rated."""

    base_url: str
    persona: Persona
    users: int = 40
    concurrency: int = 6
    seed: int = 0
    max_tokens: int = 64
    regenerate: float = 0.0  # chance that a user who disliked an answer asks again (a DPO pair)
    rated: list[Rated] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    requests: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.started = time.monotonic()

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
            user = f"user-{rng.randrange(self.users)}"
            text = prompt(rng)
            liked, regenerates = self._ask(client, user, text, None)
            # a user who disliked the answer may press "regenerate": the app sends the same
            # prompt again, linked to the disliked answer (trainer.data makes it a DPO pair)
            if liked is False and regenerates and rng.random() < self.regenerate:
                self._ask(client, user, text, regenerates)

    def _ask(self, client: openai.OpenAI, user: str, text: str, regenerates: str | None) -> tuple[bool | None, str]:
        """Asks, reads, rates; (liked, answer id), liked None when the request failed."""
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="default", user=user, messages=[{"role": "user", "content": text}],
                max_tokens=self.max_tokens, temperature=1.0,
                extra_body={"regenerates": regenerates} if regenerates else None)
            answer = raw.parse()
            liked = self.persona.likes(text, answer.choices[0].message.content or "")
            client.post("/feedback", cast_to=object,
                        body={"id": answer.id, "rating": "up" if liked else "down", "user": user})
        except openai.OpenAIError as exc:  # every failure is counted: the demo promises none
            with self._lock:
                self.requests += 1
                self.failures.append(f"{type(exc).__name__}: {exc}"[:300])
            return None, ""
        with self._lock:
            self.requests += 1
            self.rated.append(Rated(time.monotonic() - self.started,
                                    raw.headers.get("x-loraloop-adapter-version") or "base",
                                    raw.headers.get("x-loraloop-arm") or "champion", liked))
        return liked, answer.id

    def switch(self, persona: Persona) -> None:
        """The users' taste changes (the scripted scenario); the system is not told."""
        self.persona = persona


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
