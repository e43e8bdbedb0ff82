"""Rollout on a real vLLM: an experiment splits real traffic between two real adapters, and
an operator's promote and rollback switch the alias under concurrent streaming and
non-streaming load with zero failed requests; every answer is in the style of the version
its headers name, so no request saw a half-switched alias."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.engine.supervisor import EngineSupervisor
from gateway.settings import DEMO_MODEL_NAME, Settings
from tests.integration.conftest import provision, serve
from tests.style_adapters import CASUAL, FORMAL
from trainer.demo_model.corpus import NAMES, TASKS, make_prompt, style_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(vllm: EngineSupervisor, adapter_dirs: dict[str, Path],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, dict[str, str]]]:
    """(gateway url, app key, admin key, style -> version), `default` championed by formal."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("rollout"), upstreams=[vllm.url],
                        served_model_name=DEMO_MODEL_NAME, health_interval_s=0.5, upstream_timeout_s=60)
    app_key, admin_key, versions = provision(settings, adapter_dirs)
    with serve(settings) as url:
        yield url, app_key, admin_key, versions


class Load:
    """Users asking `default` from several threads, streamed and not, until stopped."""

    def __init__(self, url: str, key: str, threads: int = 6):
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
        self.answers: list[tuple[float, str, str, str | None]] = []  # (sent at, version, arm, style)
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.user, args=(i,)) for i in range(threads)]

    def user(self, n: int) -> None:
        rng = random.Random(n)
        i = 0
        while not self.stop.is_set():
            name, task = NAMES[(n * 7 + i) % len(NAMES)], i % len(TASKS)
            messages = [{"role": "user", "content": make_prompt(task, name, random.Random(task))}]
            sent = time.monotonic()
            try:
                if i % 2:
                    with self.client.chat.completions.with_streaming_response.create(
                            model="default", messages=messages, max_tokens=64, temperature=0, stream=True,
                            user=f"user-{n}-{rng.randrange(1000)}") as response:
                        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
                else:
                    response = self.client.chat.completions.with_raw_response.create(
                        model="default", messages=messages, max_tokens=64, temperature=0,
                        user=f"user-{n}-{rng.randrange(1000)}")
                    text = response.parse().choices[0].message.content or ""
                style = style_of(text, name)
                self.answers.append((sent, response.headers["x-loraloop-adapter-version"],
                                     response.headers["x-loraloop-arm"], style.describe() if style else None))
            except Exception as exc:  # any failure at all is what this test counts
                self.failures.append(repr(exc))
            i += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def since(self, moment: float) -> list[tuple[float, str, str, str | None]]:
        return [a for a in self.answers if a[0] > moment]

    def wait_for(self, n: int, after: float, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.since(after)) < n:
            assert time.monotonic() < deadline, f"only {len(self.since(after))} answers"
            time.sleep(0.2)


def test_experiment_promote_and_rollback_under_load_fail_no_request(live) -> None:  # type: ignore[no-untyped-def]
    url, app_key, admin_key, versions = live
    admin = httpx.Client(base_url=f"{url}/admin", headers={"authorization": f"Bearer {admin_key}"}, timeout=30)
    style = {versions["formal"]: FORMAL.describe(), versions["casual"]: CASUAL.describe()}
    with Load(url, app_key) as load:
        load.wait_for(6, 0)
        started = admin.post("/experiments", json={"alias": "default", "canary": versions["casual"], "share": 0.5})
        assert started.status_code == 200, started.text
        t_start = time.monotonic()
        load.wait_for(24, t_start)
        promoted = admin.post("/aliases/default/promote", json={"reason": "test"})
        assert promoted.status_code == 200 and promoted.json()["status"] == "promoted", promoted.text
        t_promote = time.monotonic()
        load.wait_for(30, t_promote)
        t_rollback_asked = time.monotonic()
        rolled = admin.post("/aliases/default/rollback", json={"reason": "test"})
        assert rolled.json() == {"alias": "default", "champion": versions["formal"]}
        t_rollback = time.monotonic()
        load.wait_for(30, t_rollback)
    assert load.failures == []
    # every answer is in the style of the version its headers name: routing and serving agree
    assert [(v, s) for _, v, _, s in load.answers if style[v] != s] == []
    during = [(v, arm) for t, v, arm, _ in load.answers if t_start < t < t_promote]
    assert {arm for _, arm in during} == {"champion", "canary"}
    # requests sent after an admin call returned see its result at once on this gateway
    # (other gateway replicas converge within LORALOOP_REGISTRY_REFRESH_S)
    assert {v for t, v, _, _ in load.answers if t_promote < t < t_rollback_asked} == {versions["casual"]}
    assert {v for t, v, _, _ in load.answers if t > t_rollback} == {versions["formal"]}
    history = admin.get(f"/adapters/{versions['casual']}").json()["history"]
    assert [(h["from"], h["to"]) for h in history if h["action"] == "transition"] == \
        [("approved", "canary"), ("canary", "champion"), ("champion", "retired")]
