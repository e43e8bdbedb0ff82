"""Acknowledged ratings survive `kill -9` of the gateway, on SQLite and on PostgreSQL.

A real `loraloop serve` process fronts the real vLLM server; threads rate its answers as
fast as they can; the gateway is killed with SIGKILL mid-load; every rating that got a 2xx
must be in the store, with the value last acknowledged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from adapters.db import make_engine, make_sessionmaker
from adapters.schema import Feedback
from gateway.engine.supervisor import EngineSupervisor
from gateway.settings import DEMO_MODEL_NAME
from tests.integration.conftest import free_port, start_gateway

pytestmark = pytest.mark.integration


def test_acknowledged_ratings_survive_sigkill(vllm: EngineSupervisor, db_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "LORALOOP_DATA_DIR": str(tmp_path), "LORALOOP_DATABASE_URL": db_url,
           "LORALOOP_UPSTREAMS": vllm.url, "LORALOOP_PORT": str(port)}
    key = json.loads(subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "create", "--name", "app"],
                                    env=env, capture_output=True, text=True, check=True).stdout)["key"]
    url, headers = f"http://127.0.0.1:{port}", {"authorization": f"Bearer {key}"}
    gateway = start_gateway(env, port)
    try:
        ids = [httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=60, json={
            "model": DEMO_MODEL_NAME, "max_tokens": 4, "user": f"user-{i}",
            "messages": [{"role": "user", "content": f"Hi, I'm Sam. Can you help me {i}?"}]}).json()["id"]
            for i in range(8)]

        acknowledged: dict[tuple[str, str], int] = {}
        lock, stop = threading.Lock(), threading.Event()

        def rater(worker: int) -> None:
            with httpx.Client(headers=headers, timeout=10) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    answer, user, rating = ids[n % len(ids)], f"rater-{worker}-{n % 50}", 1 if n % 3 else -1
                    try:
                        resp = client.post(f"{url}/v1/feedback", json={"id": answer, "rating": rating, "user": user})
                    except httpx.HTTPError:
                        return  # the gateway is gone: this rating was never acknowledged
                    if resp.status_code == 200:
                        with lock:
                            acknowledged[(answer, user)] = rating

        threads = [threading.Thread(target=rater, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        time.sleep(3)
        with lock:  # everything acknowledged until the kill, and a little after, is counted
            gateway.send_signal(signal.SIGKILL)
        gateway.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        if gateway.poll() is None:
            gateway.kill()

    assert len(acknowledged) > 100, "the load never got going"
    gateway = start_gateway(env, port)  # restarts cleanly on what the crash left
    try:
        engine = make_engine(db_url)
        with make_sessionmaker(engine)() as session:
            stored = {(f.interaction_id, f.end_user): f.rating for f in session.scalars(select(Feedback))}
        engine.dispose()
        lost = {k: v for k, v in acknowledged.items() if stored.get(k) != v}
        assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged ratings lost or changed"
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
