"""Abuse and access: per-key rate limits, tenants that cannot see each other's adapters,
aliases or training data, and an admin surface that can live on its own port or not at all."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import openai
import pytest

from adapters import registry
from adapters.db import make_engine, make_sessionmaker
from adapters.errors import InvalidTransition, LoraloopError
from adapters.feedback import Rating, write_interactions, write_ratings
from adapters.schema import AdapterState, utcnow
from tests.fake_vllm import BASE
from tests.unit.harness import Gateway, chat, fake_adapter, make_gateway, new_key
from trainer.data import DataConfig, build, for_alias


@pytest.fixture
def limited(tmp_path: Path, db_url: str):  # type: ignore[no-untyped-def]
    gateway = make_gateway(tmp_path, db_url, rate_limit_rpm=60, rate_limit_burst_s=5)  # 1/s, bursts of 5
    with gateway.http:
        yield gateway


def test_a_key_over_its_rate_gets_429_and_changes_nothing(limited: Gateway) -> None:
    client = limited.sdk()
    for _ in range(5):
        chat(client, "default")
    with pytest.raises(openai.RateLimitError) as err:
        chat(client, "default")
    assert err.value.status_code == 429 and err.value.code == "rate_limit_exceeded"
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 60
    assert "60 requests per minute" in err.value.message
    # feedback counts too: a flood of ratings is refused at the door
    rated = limited.http.post("/v1/feedback", json={"id": "chatcmpl-x", "rating": "up"},
                              headers={"authorization": f"Bearer {limited.app_key}"})
    assert rated.status_code == 429 and rated.json()["error"]["type"] == "requests"
    assert sum(len(r.seen) for r in limited.fleet.replicas.values()) == 5  # the 6th never reached vLLM


def test_limits_are_per_key_and_a_key_may_have_its_own(limited: Gateway) -> None:
    for _ in range(5):
        chat(limited.sdk(), "default")
    other = new_key(limited)  # the gateway's default: its own full bucket
    for _ in range(5):
        chat(limited.sdk(other), "default")
    unlimited = new_key(limited, rate_limit_rpm=0)
    for _ in range(20):
        chat(limited.sdk(unlimited), "default")
    strict = new_key(limited, rate_limit_rpm=6)  # 0.1/s, bursts of 1
    chat(limited.sdk(strict), "default")
    with pytest.raises(openai.RateLimitError) as err:
        chat(limited.sdk(strict), "default")
    assert int(err.value.response.headers["retry-after"]) >= 9


def test_without_a_limit_nothing_is_limited(gw: Gateway) -> None:
    for _ in range(30):
        chat(gw.sdk(), "default")


def own_adapter(gw: Gateway, tmp_path: Path, tenant: str, alias: bool = True, seed: int = 40) -> str:
    """A version that belongs to `tenant`, champion of its alias `<tenant>-support`."""
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine).begin() as session:
        name = registry.register(session, fake_adapter(tmp_path / f"{tenant}{seed}", seed), tmp_path / "store",
                                 BASE, prefix=tenant, state=AdapterState.approved, tenant=tenant).name
        if alias:
            registry.set_champion(session, f"{tenant}-support", name, tenant=tenant)
    engine.dispose()
    gw.http.portal.call(gw.http.app.state.gateway.router.refresh)  # type: ignore[union-attr]
    return name


def test_a_tenant_never_sees_or_calls_another_tenants_adapters(gw: Gateway, tmp_path: Path) -> None:
    version = own_adapter(gw, tmp_path, "globex")
    acme, globex = gw.sdk(), gw.sdk(new_key(gw, "globex"))
    for model in (version, "globex-support"):
        with pytest.raises(openai.NotFoundError) as err:
            chat(acme, model)
        assert err.value.code == "model_not_found"  # the same answer as for a name that does not exist
        assert chat(globex, model).headers["x-loraloop-adapter-version"] == version
    acme_models = {m.id for m in acme.models.list()}
    assert {gw.champion, "default"} <= acme_models and not {version, "globex-support"} & acme_models
    assert {version, "globex-support", "default"} <= {m.id for m in globex.models.list()}
    # ... and its answers cannot be rated by the other tenant
    answer = chat(globex, "globex-support").parse()
    rated = gw.http.post("/v1/feedback", json={"id": answer.id, "rating": "down"},
                         headers={"authorization": f"Bearer {gw.app_key}"})
    assert rated.status_code == 404


def test_a_tenants_adapter_never_serves_another_tenants_alias(gw: Gateway, tmp_path: Path) -> None:
    own_adapter(gw, tmp_path, "globex")
    version = own_adapter(gw, tmp_path, "globex", alias=False, seed=41)
    engine = make_engine(gw.settings.db_url)
    with make_sessionmaker(engine).begin() as session, pytest.raises(InvalidTransition, match="another tenant"):
        registry.set_champion(session, "default", version)  # a shared alias
    with make_sessionmaker(engine).begin() as session, pytest.raises(InvalidTransition, match="tenant 'globex'"):
        registry.set_champion(session, "globex-support", gw.champion, tenant="acme")
    engine.dispose()


def test_training_data_stays_with_its_tenant(gw: Gateway, tmp_path: Path) -> None:
    """An alias a tenant owns trains on that tenant's ratings only; a shared alias on tenant
    'default' only, unless cross-tenant training is opted in, and even then never on the
    ratings of a tenant that owns an alias."""
    own_adapter(gw, tmp_path, "globex")
    engine = make_engine(gw.settings.db_url)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        rows = [{"id": f"chatcmpl-{tenant}-{i}", "key_id": 1, "tenant": tenant, "end_user": f"u{i}",
                 "requested_model": "default", "adapter_version": None, "arm": "base", "kind": "chat",
                 "prompt": [{"role": "user", "content": f"{tenant} secret {i % 2}"}], "response": f"answer {i}",
                 "finish_reason": "stop", "status": 200, "prompt_tokens": 1, "completion_tokens": 1,
                 "latency_ms": 1.0, "regenerates": None, "created_at": utcnow()}
                for tenant in ("acme", "globex") for i in range(4)]
        write_interactions(session, rows)
        write_ratings(session, [Rating(r["id"], None, 1 if i % 4 < 2 else -1, None, r["tenant"])
                                for i, r in enumerate(rows)])
    with sessions() as session:
        for alias, tenant, cross in (("globex-support", "globex", False), ("default", "acme", True)):
            cfg = DataConfig(heldout_fraction=0.0, cross_tenant=cross)
            data = build(session, "kto", for_alias(session, alias, cfg))["train"]
            assert data and all(e["prompt"][0]["content"].startswith(tenant) for e in data), alias
        # by default a shared alias learns nothing from acme (a tenant that never opted in)
        assert build(session, "kto", for_alias(session, "default", DataConfig(heldout_fraction=0.0)))["train"] == []
    engine.dispose()


def test_admin_api_on_its_own_port(tmp_path: Path, db_url: str) -> None:
    gw = make_gateway(tmp_path, db_url, admin_port=9001)
    admin = {"authorization": f"Bearer {gw.admin_key}"}
    with gw.http:
        public = gw.http.get("/admin/adapters", headers=admin)
        assert public.status_code == 404 and "admin port" in public.json()["error"]["message"]
        assert gw.http.get("http://testserver:9001/admin/adapters", headers=admin).status_code == 200
        assert gw.http.get("http://testserver:9001/v1/models", headers=admin).status_code == 404
        assert gw.http.get("http://testserver:9001/health").status_code == 200
        assert chat(gw.sdk(), "default").status_code == 200


def test_admin_api_can_be_turned_off(tmp_path: Path, db_url: str) -> None:
    gw = make_gateway(tmp_path, db_url, admin_api=False)
    with gw.http:
        got = gw.http.get("/admin/adapters", headers={"authorization": f"Bearer {gw.admin_key}"})
        assert got.status_code == 404 and got.json()["error"]["type"] == "not_found_error"
        assert chat(gw.sdk(), "default").status_code == 200


TRAVERSAL = ["../../etc/passwd", "..", "/etc/passwd", "%2e%2e%2fetc", "formal/../../x", "a\\..\\b", "~root"]


@pytest.mark.parametrize("name", TRAVERSAL)
def test_names_that_try_to_leave_the_store_are_plain_not_found(gw: Gateway, name: str) -> None:
    """A model, alias or version name is looked up, never joined to a path."""
    with pytest.raises(openai.NotFoundError) as err:
        chat(gw.sdk(), name)
    assert err.value.code == "model_not_found"
    admin = {"authorization": f"Bearer {gw.admin_key}"}
    shown = gw.http.get(f"/admin/adapters/{name}", headers=admin)
    promoted = gw.http.post(f"/admin/aliases/{name}/promote", headers=admin, json={})
    started = gw.http.post("/admin/experiments", headers=admin, json={"alias": name, "canary": name})
    for resp in (shown, promoted, started):
        assert resp.status_code in (400, 404) and set(resp.json()["error"]) >= {"message", "type"}
    assert sum(len(r.loads) for r in gw.fleet.replicas.values()) == 0  # nothing was loaded anywhere


def _unknown_key() -> str:
    import secrets

    return "ll-" + secrets.token_urlsafe(32)


def test_keys_of_the_wrong_shape_cost_no_database_lookup(gw: Gateway) -> None:
    """Pre-auth load: a bearer token that cannot be a key is refused before it is hashed,
    looked up or cached."""
    auth = gw.http.app.state.gateway.auth
    lookups: list[str] = []
    original = auth._lookup
    auth._lookup = lambda key_hash: lookups.append(key_hash) or original(key_hash)
    for token in ("x", "ll-short", "sk-" + "a" * 43, "ll-" + "!" * 43, "ll-" + "a" * 4000):
        with pytest.raises(openai.AuthenticationError):
            chat(gw.sdk(token), "default")
    assert lookups == [] and len(auth._known) + len(auth._unknown) == 0
    chat(gw.sdk(), "default")
    assert len(lookups) == 1


def test_random_keys_never_evict_the_keys_clients_use(tmp_path: Path, db_url: str) -> None:
    """The cache used to be wiped whole at 10,000 entries, unknown keys included: a flood of
    random keys evicted every valid one and sent each request to the database."""
    gw = make_gateway(tmp_path, db_url, auth_cache_ttl_s=3600, auth_failures_per_minute=0)
    with gw.http:
        auth = gw.http.app.state.gateway.auth
        auth._known.size = auth._unknown.size = 50
        chat(gw.sdk(), "default")
        lookups: list[str] = []
        original = auth._lookup
        auth._lookup = lambda key_hash: lookups.append(key_hash) or original(key_hash)
        for _ in range(200):
            with pytest.raises(openai.AuthenticationError):
                chat(gw.sdk(_unknown_key()), "default")
        assert len(auth._unknown) == 50  # bounded
        lookups.clear()
        chat(gw.sdk(), "default")
        assert lookups == []  # still cached


def test_an_address_guessing_keys_costs_one_lookup_at_a_time_and_real_keys_still_pass(
        tmp_path: Path, db_url: str) -> None:
    """Past its budget, an address's lookups take turns in one lane (429 while it is busy):
    concurrent guesses cannot all reach the database, and a real key sent from the same
    address (a NAT, a proxy) is never locked out."""
    gw = make_gateway(tmp_path, db_url, auth_failures_per_minute=10)
    with gw.http:
        auth = gw.http.app.state.gateway.auth
        lookups: list[str] = []
        original = auth._lookup

        def slow_lookup(key_hash: str):  # type: ignore[no-untyped-def]
            lookups.append(key_hash)
            time.sleep(0.02)  # a database under load: lookups overlap
            return original(key_hash)

        auth._lookup = slow_lookup

        async def burst(n: int, address: str) -> list[str]:
            async def one() -> str:
                try:
                    await auth.authenticate(f"Bearer {_unknown_key()}", address)
                except LoraloopError as err:
                    return type(err).__name__
                return "ok"
            return list(await asyncio.gather(*(one() for _ in range(n))))

        got = gw.http.portal.call(burst, 50, "203.0.113.7")
        # the budget's 10 tokens are taken before the lookups, so 50 at once cannot all pass
        assert len(lookups) <= 11 and got.count("RateLimited") >= 39, (len(lookups), got)
        assert got.count("Unauthenticated") == len(lookups)
        # a key the gateway has never seen, from the throttled address: still let in
        fresh = new_key(gw)
        principal = gw.http.portal.call(auth.authenticate, f"Bearer {fresh}", "203.0.113.7")
        assert principal.tenant == "acme"
        # another address, and IPv6 neighbours share a /64 budget
        assert gw.http.portal.call(burst, 5, "198.51.100.1") == ["Unauthenticated"] * 5
        lookups.clear()
        gw.http.portal.call(burst, 50, "2001:db8::1")
        assert len(lookups) <= 11
        lookups.clear()
        gw.http.portal.call(burst, 50, "2001:db8::2")  # same /64: no fresh budget
        assert len(lookups) <= 1
