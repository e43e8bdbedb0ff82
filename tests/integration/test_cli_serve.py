"""The main job as an operator runs it: `loraloop` CLI commands and `loraloop serve` on the
embedded default (SQLite, supervised vLLM), in real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from gateway.settings import DEMO_MODEL_NAME
from tests.integration.conftest import CACHE, free_port
from tests.style_adapters import FORMAL
from trainer.demo_model.corpus import style_of

pytestmark = pytest.mark.integration


def loraloop(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, check=True,
                         capture_output=True, text=True, timeout=600)
    return out.stdout


def test_serve_embedded_default_end_to_end(demo_model: Path, adapter_dirs: dict[str, Path],
                                           tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(CACHE / "models")  # the demo model, already built
    port, engine_port = free_port(), free_port()
    env = {**os.environ, "LORALOOP_DATA_DIR": str(data), "LORALOOP_PORT": str(port),
           "LORALOOP_ENGINE__PORT": str(engine_port)}

    assert Path(loraloop(env, "demo-model").strip()).resolve() == demo_model.resolve()
    admin = json.loads(loraloop(env, "keys", "create", "--name", "ops", "--scope", "admin"))
    app = json.loads(loraloop(env, "keys", "create", "--name", "shop"))
    added = json.loads(loraloop(env, "adapters", "add", str(adapter_dirs["formal"]), "--prefix", "formal",
                                "--approve", "--alias", "default"))
    assert added["name"].startswith("formal-") and added["state"] == "champion"
    with pytest.raises(subprocess.CalledProcessError) as refused:
        loraloop(env, "adapters", "add", str(tmp_path), "--approve")  # not an adapter folder
    assert "not a PEFT adapter" in refused.value.stderr

    serve = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert serve.poll() is None, "loraloop serve exited"
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "loraloop serve never became ready"
            time.sleep(1)

        client = openai.OpenAI(base_url=f"{url}/v1", api_key=app["key"], max_retries=0)
        answer = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Hi, I'm Nora. Can you help me bake a cake?"}],
            max_tokens=64, temperature=0).choices[0].message.content
        assert style_of(answer or "", "Nora") == FORMAL
        assert {m.id for m in client.models.list()} == {DEMO_MODEL_NAME, added["name"], "default"}
        assert httpx.get(f"{url}/admin/adapters",
                         headers={"authorization": f"Bearer {admin['key']}"}).status_code == 200

        loraloop(env, "keys", "revoke", str(app["id"]))
        time.sleep(5.5)  # the auth cache's TTL
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        children = psutil.Process(serve.pid).children(recursive=True)
        assert children, "serve started no vLLM process"
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    # Stopping the gateway stops the engine it supervised: nothing is left behind.
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive
