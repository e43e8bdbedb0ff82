"""A gateway wired to a fake vLLM fleet and a real database, for unit tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai
from fastapi.testclient import TestClient
from safetensors.numpy import save_file

from adapters import registry
from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.schema import AdapterState, Scope
from gateway import auth
from gateway.app import create_app
from gateway.settings import Settings
from tests.fake_vllm import BASE, FakeFleet


def fake_adapter(folder: Path, seed: int, rank: int = 8) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank,
                                                            "target_modules": ["q_proj", "v_proj"]}))
    save_file({"layers.0.self_attn.q_proj.lora_A.weight": np.full((rank, 4), seed, np.float32)},
              str(folder / "adapter_model.safetensors"))
    return folder


@dataclass
class Gateway:
    http: TestClient
    fleet: FakeFleet
    app_key: str
    admin_key: str
    pinned: str  # an approved version that is no alias's champion
    champion: str  # champion of alias "default"
    settings: Settings

    def operator_get(self, path: str):  # type: ignore[no-untyped-def]
        """GET `path` as an operator (the admin key): /metrics, /ready's details."""
        return self.http.get(path, headers={"authorization": f"Bearer {self.admin_key}"})

    def sdk(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url="http://testserver/v1", api_key=key or self.app_key,
                             http_client=self.http, max_retries=0)


def make_gateway(tmp_path: Path, db_url: str, **overrides) -> Gateway:
    settings = Settings(**{"data_dir": tmp_path, "database_url": db_url, "upstreams": [], "auth": "keys",
                           "health_interval_s": 3600, "registry_refresh_s": 3600, "auth_cache_ttl_s": 0,
                           **overrides})
    fleet = FakeFleet(2)
    settings = settings.model_copy(update={"upstreams": fleet.urls})
    engine = make_engine(db_url)
    upgrade(engine)
    with make_sessionmaker(engine).begin() as session:
        app_key, _ = auth.create_key(session, "app", Scope.app, tenant="acme")
        admin_key, _ = auth.create_key(session, "ops", Scope.admin)
        store = tmp_path / "store"
        pinned = registry.register(session, fake_adapter(tmp_path / "a", 1), store, BASE,
                                   prefix="style", state=AdapterState.approved).name
        champion = registry.register(session, fake_adapter(tmp_path / "b", 2), store, BASE,
                                     state=AdapterState.approved).name
        registry.register(session, fake_adapter(tmp_path / "c", 3), store, BASE)  # a candidate
        registry.set_champion(session, "default", champion)
        session.add(registry.Alias(name="empty"))
    engine.dispose()
    http = TestClient(create_app(settings, transport=fleet.transport()), raise_server_exceptions=False)
    return Gateway(http, fleet, app_key, admin_key, pinned, champion, settings)


def new_key(gw: Gateway, tenant: str = "acme", scope: Scope = Scope.app, log_prompts: bool = True,
            rate_limit_rpm: int | None = None) -> str:
    """Another API key on this gateway's database."""
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine).begin() as session:
        key, _ = auth.create_key(session, f"k-{tenant}", scope, tenant=tenant, log_prompts=log_prompts,
                                 rate_limit_rpm=rate_limit_rpm)
    engine.dispose()
    return key


def chat(client: openai.OpenAI, model: str, **kw):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], **kw)
