"""The embedded vLLM's key: a fresh one per `loraloop serve`, handed to vLLM by environment
(never on its command line) and to the gateway as `upstream_api_key`; vLLM then requires it
on every route but /health and /metrics (gateway/engine/api_key.py). No vLLM runs here: the
guard is exercised on a stand-in app with vLLM's routes (tests/integration/test_vllm_routes.py
checks it on vLLM's own app)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.engine import supervisor
from gateway.engine.api_key import RequireApiKey
from gateway.settings import EngineSettings, Settings


def ok(request) -> PlainTextResponse:  # type: ignore[no-untyped-def]
    return PlainTextResponse("ok")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hi")
    await websocket.close()


def guarded(monkeypatch: pytest.MonkeyPatch, key: str = "s3cret") -> TestClient:
    """vLLM's routes that matter here, behind the guard as vLLM's --middleware adds it."""
    monkeypatch.setenv("VLLM_API_KEY", key)
    routes = [Route(path, ok, methods=["GET", "POST", "DELETE"]) for path in
              ("/health", "/metrics", "/adapters", "/adapters/{name}", "/invocations", "/tokenize",
               "/v1/load_lora_adapter", "/v1/models")]
    app = Starlette(routes=[*routes, WebSocketRoute("/v1/realtime", echo)])
    app.add_middleware(RequireApiKey)  # no arguments: how vLLM adds a --middleware class
    return TestClient(app)


def test_every_route_but_the_probes_needs_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    client = guarded(monkeypatch)
    key = {"authorization": "Bearer s3cret"}
    for path in ("/health", "/metrics"):
        assert client.get(path).status_code == 200
    # vLLM's own --api-key leaves the first three open: adapter loading and inference
    for method, path in (("POST", "/adapters"), ("DELETE", "/adapters/x"), ("POST", "/invocations"),
                         ("POST", "/tokenize"), ("POST", "/v1/load_lora_adapter"), ("GET", "/v1/models")):
        assert client.request(method, path).status_code == 401, path
        assert client.request(method, path, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.request(method, path, headers={"authorization": "Basic s3cret"}).status_code == 401
        assert client.request(method, path, headers=key).status_code == 200, path
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/v1/realtime") as ws:
        ws.receive_text()
    with client.websocket_connect("/v1/realtime", headers=key) as ws:
        assert ws.receive_text() == "hi"


def test_the_guard_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="VLLM_API_KEY"):
        RequireApiKey(ok)


def test_the_supervisor_hands_the_key_to_vllm_by_environment_only(tmp_path: Path) -> None:
    engine = EngineSettings(port=8123)
    keyed = supervisor.EngineSupervisor("model", "base", engine, tmp_path / "vllm.log", api_key="k-123")
    assert keyed.env["VLLM_API_KEY"] == "k-123"
    assert "k-123" not in " ".join(keyed.command)  # a process's arguments are readable by every local user
    at = keyed.command.index("--middleware")
    assert keyed.command[at + 1] == "gateway.engine.api_key.RequireApiKey"
    assert keyed.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    bare = supervisor.EngineSupervisor("model", "base", engine, tmp_path / "vllm.log")
    assert "--middleware" not in bare.command and bare.env.get("VLLM_API_KEY") != "k-123"
    first, second = supervisor.new_api_key(), supervisor.new_api_key()
    assert first != second and len(first) >= 40


def test_serve_gives_the_gateway_the_key_it_gave_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`loraloop serve` (embedded): a fresh key per start reaches both the vLLM it launches and
    the settings the gateway's upstream client is built from; an operator's own key is kept."""
    from gateway import app, cli, listeners

    started: list[supervisor.EngineSupervisor] = []
    served: list[Settings] = []

    class Supervisor(supervisor.EngineSupervisor):
        def start(self, wait: bool = True) -> None:
            started.append(self)

        def stop(self, grace_s: float = 10.0) -> None:
            pass

    monkeypatch.setattr(supervisor, "EngineSupervisor", Supervisor)
    monkeypatch.setattr(app, "create_app", lambda settings: settings)
    monkeypatch.setattr(listeners, "run", lambda settings, *args: served.append(settings))
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    settings = Settings(data_dir=tmp_path, base_model=str(tmp_path))
    args = argparse.Namespace(access_log=False)

    cli.cmd_serve(settings, args)
    cli.cmd_serve(settings, args)
    keys = [s.env["VLLM_API_KEY"] for s in started]
    assert keys[0] != keys[1]  # one per start
    assert [s.upstream_api_key for s in served] == keys
    assert [s.upstreams for s in served] == [[started[0].url]] * 2

    cli.cmd_serve(settings.model_copy(update={"upstream_api_key": "operator-key"}), args)
    assert started[-1].env["VLLM_API_KEY"] == served[-1].upstream_api_key == "operator-key"
