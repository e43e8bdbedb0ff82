"""While the database restarts: completions keep being served (keys seen recently, the
routing table in memory, interactions queued and retried), ratings are refused with a 503
`database_unavailable` that says nothing was stored; once it is back, everything queued is
written and ratings are stored again."""

from __future__ import annotations

import time

from sqlalchemy import create_engine, select

from adapters.schema import Interaction
from tests.unit.harness import Gateway, chat


def test_a_database_outage_costs_ratings_a_retry_and_nothing_else(gw: Gateway) -> None:
    state = gw.http.app.state.gateway
    client = gw.sdk()
    before = chat(client, "default").parse().id  # the key is now known to this gateway
    down = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/gone", hide_parameters=True)
    state.sessions.configure(bind=down)  # every part of the gateway shares this sessionmaker
    try:
        during = chat(client, "default").parse().id
        rated = gw.http.post("/v1/feedback", json={"id": before, "rating": "up"},
                             headers={"authorization": f"Bearer {gw.app_key}"})
        assert rated.status_code == 503 and rated.json()["error"]["code"] == "database_unavailable"
        assert "nothing was stored" in rated.json()["error"]["message"] and rated.headers["retry-after"]
        assert gw.http.get("/v1/models", headers={"authorization": f"Bearer {gw.app_key}"}).status_code == 200
    finally:
        state.sessions.configure(bind=state.engine)
        down.dispose()
    deadline = time.monotonic() + 15
    while True:  # the interaction log retries every second
        with state.sessions() as session:
            if session.scalar(select(Interaction.id).where(Interaction.id == during)):
                break
        assert time.monotonic() < deadline, "the interaction served during the outage was never written"
        time.sleep(0.2)
    again = gw.http.post("/v1/feedback", json={"id": during, "rating": "up"},
                         headers={"authorization": f"Bearer {gw.app_key}"})
    assert again.status_code == 200
