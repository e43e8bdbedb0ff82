"""A real Prometheus scrapes a real gateway (in front of vLLM) serving real traffic with
feedback: every dashboard query and recording rule returns data, every alert expression is
valid, and the deploy/prometheus config works as shipped (only its targets are swapped)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from adapters import experiments, registry
from adapters.db import make_engine, make_sessionmaker, upgrade
from adapters.feedback import Rating, write_interactions, write_ratings
from adapters.schema import AdapterState, Scope, utcnow
from gateway import auth
from gateway.engine.supervisor import EngineSupervisor
from gateway.settings import DEMO_MODEL_NAME, ExperimentSettings, Settings
from tests.integration.conftest import free_port, serve
from tests.unit.test_monitoring_config import DEPLOY, load_dashboards
from trainer.gate import evaluate
from trainer.runs import run_exclusive

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="prometheus not installed (Debian package prometheus; install.sh adds it)")
PROMPTS = ["Hi, I'm Ada. Can you help me bake a cake?", "Hello, I'm Bo. How do I fix a flat tyre?",
           "Hey, I'm Cy. What should I plant in spring?"]


class Finished:
    """What a training run returns, as far as the run record needs it."""

    def __init__(self, version: str):
        self.version, self.approved, self.examples, self.reasons = version, True, 40, []


def seed(settings: Settings, demo_model: Path, adapter_dirs: dict[str, Path]) -> str:
    """A deployment with history: rated traffic from two days ago, a gate-judged champion
    trained since, recorded training runs, and a canary in an experiment."""
    engine = make_engine(settings.db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    past = utcnow() - timedelta(days=2)
    with sessions.begin() as session:
        key, _ = auth.create_key(session, "app", Scope.app)
        write_interactions(session, [
            {"id": f"old-{i}", "key_id": None, "tenant": "default", "end_user": "u", "requested_model": "default",
             "adapter_version": None, "arm": "champion", "kind": "chat",
             "prompt": [{"role": "user", "content": PROMPTS[i % 3]}], "response": "ok", "finish_reason": "stop",
             "status": 200, "prompt_tokens": 9, "completion_tokens": 9, "latency_ms": 10.0, "regenerates": None,
             "created_at": past} for i in range(30)])
        write_ratings(session, [Rating(f"old-{i}", None, 1, None, "default") for i in range(30)])
    report = evaluate(str(demo_model), adapter_dirs["formal"], [], PROMPTS)  # the real gate
    with sessions.begin() as session:
        version = registry.register(session, adapter_dirs["formal"], settings.adapter_store, DEMO_MODEL_NAME,
                                    prefix="formal")
        version.eval_report = {"passed": report.passed, "reasons": report.reasons, "metrics": report.metrics}
        registry.transition(session, version.name, AdapterState.approved)
        registry.set_champion(session, "default", version.name)
        name = version.name
        canary = registry.register(session, adapter_dirs["casual"], settings.adapter_store, DEMO_MODEL_NAME,
                                   prefix="casual", state=AdapterState.approved)
        experiments.start(session, "default", canary.name, 0.5, 24, actor="test")
    for outcome in (lambda: Finished(name), lambda: 1 / 0):  # one approved run, one that crashed
        run_exclusive(sessions, "dpo", timedelta(hours=1), settings.data_dir / "runs", outcome)
    engine.dispose()
    return key


@pytest.fixture(scope="module")
def monitored(vllm: EngineSupervisor, demo_model: Path, adapter_dirs: dict[str, Path],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """(gateway url, app key, prometheus url)."""
    data = tmp_path_factory.mktemp("monitored")
    settings = Settings(data_dir=data, upstreams=[vllm.url], served_model_name=DEMO_MODEL_NAME,
                        health_interval_s=0.5, stats_refresh_s=1, upstream_timeout_s=60,
                        experiments=ExperimentSettings(check_interval_s=1))
    key = seed(settings, demo_model, adapter_dirs)
    engine = make_engine(settings.db_url)
    with make_sessionmaker(engine).begin() as session:  # /metrics is for operators: Prometheus sends an admin key
        admin_key, _ = auth.create_key(session, "prometheus", Scope.admin)
    engine.dispose()
    with serve(settings) as gateway, running_prometheus(gateway, vllm.url, data, admin_key) as prom:
        yield gateway, key, prom


@contextmanager
def running_prometheus(gateway: str, vllm: str, data: Path, admin_key: str) -> Iterator[str]:
    """Debian's Prometheus on loopback with deploy/prometheus's rules; yields its URL."""
    # deploy/prometheus/prometheus.yml as shipped, scraping this gateway and this vLLM every second
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    targets = {"loraloop-gateway": gateway.removeprefix("http://"), "vllm": vllm.removeprefix("http://")}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        if job["job_name"] == "loraloop-gateway":  # as the shipped config's comment says
            job["authorization"] = {"type": "Bearer", "credentials": admin_key}
    (data / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_port = free_port()
    prom = f"http://127.0.0.1:{prom_port}"
    with open(data / "prometheus.log", "wb") as prom_log:
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={data / 'prometheus.yml'}", f"--storage.tsdb.path={data / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=subprocess.DEVNULL, stderr=prom_log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{prom}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert prometheus.poll() is None and time.monotonic() < deadline, (data / "prometheus.log").read_text()
            time.sleep(0.2)
        yield prom
    finally:
        prometheus.terminate()
        prometheus.wait(10)


def traffic(gateway: str, key: str) -> None:
    """What an app does: plain, streamed and adapter-pinned completions, ratings, a mistake."""
    import openai

    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0)
    for i, prompt in enumerate(PROMPTS * 2):
        messages = [{"role": "user", "content": prompt}]
        answer = client.chat.completions.create(model="default", messages=messages, max_tokens=16, user=f"u{i}")
        client.post("/feedback", cast_to=object, body={"id": answer.id, "rating": "up" if i % 3 else "down"})
        client.chat.completions.create(model=DEMO_MODEL_NAME, messages=messages, max_tokens=16)
        with client.chat.completions.create(model="default", messages=messages, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True}) as stream:
            assert list(stream)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])


def query(prom: str, expr: str) -> dict:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]


def test_every_dashboard_panel_and_recording_rule_shows_data(monitored: tuple[str, str, str]) -> None:
    gateway, key, prom = monitored
    traffic(gateway, key)
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"][0]["rules"]
    expressions = [(f"rule {r['record']}", r["record"]) for r in rules]
    expressions += [(f"{uid}: {title}", expr) for uid, title, expr in load_dashboards().queries()]
    deadline = time.monotonic() + 60
    while True:
        empty = [name for name, expr in expressions if not query(prom, expr)["result"]]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert empty == [], f"no data for: {empty}"
    targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {"loraloop-gateway": "up", "vllm": "up"}

    # The numbers are the traffic's: 6 rated answers from the experiment's arms, 2 of them thumbs down.
    ratings = query(prom, 'sum by (rating) (loraloop_feedback_total{arm=~"champion|canary"})')["result"]
    assert {r["metric"]["rating"]: float(r["value"][1]) for r in ratings} == {"up": 4.0, "down": 2.0}
    drift = float(query(prom, "loraloop_prompt_drift")["result"][0]["value"][1])
    assert 0 <= drift < 0.2  # recent prompts are the ones the champion's data had


def test_every_alert_expression_is_valid_and_quiet_on_a_healthy_system(monitored: tuple[str, str, str]) -> None:
    _, _, prom = monitored
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    for rule in groups[0]["rules"]:
        query(prom, rule["expr"])  # parses and evaluates against real series
    loaded = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {r["name"] for g in loaded for r in g["rules"] if r["type"] == "alerting"} \
        == {r["alert"] for r in groups[0]["rules"]}
    firing = httpx.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    # one crashed run is no alert; nothing else is wrong with this system
    assert [a["labels"]["alertname"] for a in firing if a["state"] == "firing"] == []
