"""The gateway as operators run it (`loraloop serve`, a real process, in front of a stub
upstream): the admin API only on its own port, both ports closed by one SIGTERM, and no key,
prompt, answer or comment in its logs even with the access log on and errors on the way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import free_port, start_gateway

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_admin_port_signals_and_silent_logs(tmp_path: Path, db_url: str) -> None:
    stub_port, port, admin_port = free_port(), free_port(), free_port()
    stub = subprocess.Popen([sys.executable, str(ROOT / "bench" / "stub_upstream.py"), str(stub_port)])
    env = {**os.environ, "LORALOOP_DATA_DIR": str(tmp_path), "LORALOOP_DATABASE_URL": db_url,
           "LORALOOP_UPSTREAMS": f"http://127.0.0.1:{stub_port}", "LORALOOP_PORT": str(port),
           "LORALOOP_ADMIN_PORT": str(admin_port)}

    def key(scope: str) -> str:
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "create", "--name", scope,
                              "--scope", scope], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)["key"]

    app_key, admin_key = key("app"), key("admin")
    log_file = tmp_path / "gateway.log"
    with open(log_file, "w") as log:
        gateway = start_gateway(env, port, "--access-log", stdout=log, stderr=subprocess.STDOUT)
    secret = "my bank password is hunter2"
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=app_key, max_retries=0)
        answer = client.chat.completions.with_raw_response.create(  # the stub does not echo the request id
            model="stub", messages=[{"role": "user", "content": secret}]).headers["x-request-id"]
        for _ in client.chat.completions.create(model="stub", stream=True,
                                                messages=[{"role": "user", "content": secret}]):
            pass
        with pytest.raises(openai.NotFoundError):  # an error path, with the prompt in the body
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": secret}])
        broken = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={
            "authorization": f"Bearer {app_key}"}, content=b'{"model": "stub", "messages": [' + secret.encode())
        assert broken.status_code == 400
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=app_key + "x",
                          max_retries=0).models.list()
        rated = httpx.post(f"http://127.0.0.1:{port}/v1/feedback", json={"id": answer, "rating": "down",
                                                                          "comment": secret},
                           headers={"authorization": f"Bearer {app_key}"})
        assert rated.status_code == 200

        admin = {"authorization": f"Bearer {admin_key}"}
        assert httpx.get(f"http://127.0.0.1:{port}/admin/adapters", headers=admin).status_code == 404
        assert httpx.get(f"http://127.0.0.1:{admin_port}/admin/adapters", headers=admin).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{admin_port}/v1/models", headers=admin).status_code == 404

        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) is not None
        for p in (port, admin_port):
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{p}/health", timeout=2)
    finally:
        if gateway.poll() is None:
            gateway.kill()
        stub.kill()

    logged = log_file.read_text()
    assert "POST /v1/chat/completions" in logged, "the access log was on: requests are logged"
    for leak in (app_key, admin_key, app_key[3:20], "hunter2", "Certainly"):
        assert leak not in logged, f"{leak[:12]}... appears in the gateway's log"
