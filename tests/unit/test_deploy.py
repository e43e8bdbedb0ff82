"""deploy/: the compose file and Kubernetes manifests are valid against their published
schemas, every LORALOOP_ variable they set is a setting loraloop knows, and the images'
entrypoints are commands the CLI accepts. (No Docker engine or cluster runs here:
deploy/README.md says what was checked and how.)"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml
from dockerfile_parse import DockerfileParser
from pydantic import BaseModel

from gateway.cli import parser as cli_parser
from gateway.settings import Settings
from trainer.scheduler import SchedulerSettings
from trainer.scheduler import parser as scheduler_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES = "1.30.0"  # the oldest release the manifests promise to work on


def k8s_docs() -> list[tuple[str, dict]]:
    return [(f.name, doc) for f in sorted(K8S.glob("*.yaml")) if f.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(f.read_text()) if doc]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    jsonschema.validate(compose(), schema)
    services = compose()["services"]
    assert {"vllm", "gateway", "trainer", "postgres", "prometheus", "grafana"} <= set(services)
    for mount in (*services["prometheus"]["volumes"], *services["grafana"]["volumes"]):
        source = mount.split(":")[0]
        assert not source.startswith("./") or (DEPLOY / source).exists(), mount
    data = {name: [v for v in s.get("volumes", []) if v.startswith("loraloop-data:")] for name, s in services.items()}
    assert data["vllm"] == data["gateway"] == data["trainer"] == ["loraloop-data:/data"]  # one store path


@pytest.mark.parametrize("name,doc", k8s_docs(), ids=lambda v: v if isinstance(v, str) else v.get("kind", ""))
def test_kubernetes_manifests_are_valid(name: str, doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(f.name for f in K8S.glob("*.yaml")
                                                        if f.name != "kustomization.yaml")
    images = {i["name"] for i in kustomization["images"]}
    used = {c["image"] for _, doc in k8s_docs() for c in _containers(doc)}
    assert images <= used


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}) \
        .get("template", {}).get("spec") or {}
    return pod.get("containers", [])


def _setting_known(variable: str) -> bool:
    path = variable.removeprefix("LORALOOP_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(path):
        fields = {**model.model_fields, **(SchedulerSettings.model_fields if i == 0 else {})}
        if part not in fields:
            return False
        annotation = fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return True


def test_every_variable_the_deployments_set_is_a_setting() -> None:
    variables = set()
    for service in compose()["services"].values():
        variables |= set(service.get("environment", {}))
    variables |= set(compose()["x-loraloop-env"])
    for _, doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            variables |= set(doc["data"])
        for container in _containers(doc):
            variables |= {e["name"] for e in container.get("env", [])}
    ours = {v for v in variables if v.startswith("LORALOOP_")}
    assert len(ours) >= 8  # the test reads them all, not just a few
    assert [v for v in sorted(ours) if not _setting_known(v)] == []
    assert not _setting_known("LORALOOP_NO_SUCH_SETTING") and not _setting_known("LORALOOP_ENGINE__NOPE")


def _accepts(argv: list[str]) -> None:
    """Parses `loraloop ARGV` as the CLI would (the trainer's commands by the trainer's parser)."""
    if argv[0] == "scheduler":
        scheduler_parser().parse_args(argv[1:])
    else:
        cli_parser().parse_args(argv)


@pytest.mark.parametrize("image", ["gateway", "trainer"])
def test_images_run_the_cli_as_a_user_with_a_healthcheck_and_no_secrets(image: str) -> None:
    dockerfile = DockerfileParser(str(DEPLOY / "docker" / f"{image}.Dockerfile"))
    instructions = {i["instruction"]: i["value"] for i in dockerfile.structure}
    assert json.loads(instructions["ENTRYPOINT"]) == ["loraloop"]
    _accepts(json.loads(instructions["CMD"]))
    assert instructions["USER"] not in ("root", "0") and "HEALTHCHECK" in instructions
    secret_words = ("PASSWORD", "TOKEN", "SECRET", "DATABASE_URL", "API_KEY")
    assert not [k for k in dockerfile.envs if any(w in k for w in secret_words)]


def test_deployments_start_commands_the_cli_accepts() -> None:
    for name in ("gateway", "trainer"):
        _accepts(compose()["services"][name]["command"])
    for _, doc in k8s_docs():
        for container in _containers(doc):
            if container["image"].startswith("loraloop-"):
                _accepts(container["args"])
    with pytest.raises(SystemExit):
        _accepts(["serve", "--no-such-flag"])


def _redis_url(environment: dict[str, str]) -> dict:
    return redis.connection.parse_url(environment["LORALOOP_RATE_LIMIT_REDIS_URL"])


def test_gateways_share_rate_limits_through_a_redis_the_deployment_runs() -> None:
    """The gateway's LORALOOP_RATE_LIMIT_REDIS_URL names a Redis the compose file or the
    manifests start, on the port it listens on; it keeps nothing on disk (buckets only)."""
    services = compose()["services"]
    url = _redis_url(services["gateway"]["environment"])
    redis_service = services[url["host"]]
    assert redis_service["image"].startswith("redis:") and url["host"] in services["gateway"]["depends_on"]
    assert redis_service["command"][:3] == ["redis-server", "--save", ""] and "ports" not in redis_service

    docs = k8s_docs()
    gateway = next(c for _, d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway"
                   for c in _containers(d))
    url = _redis_url({e["name"]: e.get("value") for e in gateway["env"]})
    service = next(d for _, d in docs if d["kind"] == "Service" and d["metadata"]["name"] == url["host"])
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.get("port", 6379)]
    pods = [d for _, d in docs if d["kind"] in ("Deployment", "StatefulSet")
            and service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
    assert len(pods) == 1
    (container,) = _containers(pods[0])
    assert container["image"].startswith("redis:") and container["args"][:3] == ["redis-server", "--save", ""]
    assert port["port"] in [p["containerPort"] for p in container["ports"]]
    (policy,) = [d for _, d in docs if d["kind"] == "NetworkPolicy"  # Redis's own, not a namespace-wide one
                 and (labels := d["spec"]["podSelector"].get("matchLabels"))
                 and labels.items() <= service["spec"]["selector"].items()]
    assert [f["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for f in rule["from"]] \
        == [{"app": "gateway"}]


def _workload(docs: list[tuple[str, dict]], name: str) -> dict:
    return next(d for _, d in docs if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == name)


def _secret_ref(container: dict, variable: str) -> dict:
    (env,) = [e for e in container["env"] if e["name"] == variable]
    return env["valueFrom"]["secretKeyRef"]


def test_only_the_gateways_reach_vllm_and_with_its_key() -> None:
    """vLLM loads whatever adapter it is told to at run time, and its --api-key leaves some of
    the routes that do so open (deploy/README.md): a NetworkPolicy lets only the gateway pods
    (and a Prometheus, by namespace and labels both) reach its port, and the key vLLM requires
    is the one the gateway sends, from one Secret."""
    docs = k8s_docs()
    vllm, gateway = _workload(docs, "vllm"), _workload(docs, "gateway")
    vllm_labels = vllm["spec"]["template"]["metadata"]["labels"]
    (policy,) = [d for _, d in docs if d["kind"] == "NetworkPolicy"
                 and d["spec"]["podSelector"].get("matchLabels", {}).items() <= vllm_labels.items()]
    assert policy["spec"]["podSelector"]["matchLabels"] and policy["spec"]["policyTypes"] == ["Ingress"]
    (container,) = _containers(vllm)
    port_names = {p["name"] for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}
    peers = []
    for rule in policy["spec"]["ingress"]:
        assert rule["ports"] and all(p["port"] in port_names for p in rule["ports"])
        peers += rule["from"]
    in_namespace = [p["podSelector"]["matchLabels"] for p in peers if "namespaceSelector" not in p]
    assert in_namespace == [{"app": "gateway"}]
    assert in_namespace[0].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    for peer in peers:  # anything else: one namespace's pods of one kind, never a whole namespace or range
        assert "ipBlock" not in peer and peer["podSelector"].get("matchLabels")
        assert "namespaceSelector" not in peer or peer["namespaceSelector"].get("matchLabels")
    trainer = next(d for _, d in docs if d["kind"] == "CronJob" and d["metadata"]["name"] == "trainer")
    trainer_labels = trainer["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert not any(p["podSelector"]["matchLabels"].items() <= trainer_labels.items() for p in peers)

    key = _secret_ref(container, "VLLM_API_KEY")
    (gateway_container,) = _containers(gateway)
    assert _secret_ref(gateway_container, "LORALOOP_UPSTREAM_API_KEY") == key
    assert key["name"] == "loraloop" and not key.get("optional")  # a missing key stops the pods, never opens vLLM

    services = compose()["services"]
    assert services["vllm"]["environment"]["VLLM_API_KEY"] == \
        services["gateway"]["environment"]["LORALOOP_UPSTREAM_API_KEY"] == "${VLLM_API_KEY:?set it in deploy/.env}"
    vllm_networks = set(services["vllm"]["networks"])
    assert "default" not in vllm_networks and "ports" not in services["vllm"]
    reach = {name for name, s in services.items() if vllm_networks & set(s.get("networks", ["default"]))}
    assert reach == {"vllm", "gateway", "prometheus"}
