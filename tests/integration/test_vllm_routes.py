"""What vLLM's --api-key guards, on vLLM's own FastAPI app (built with its CLI's arguments, in
a child process, with no engine and no model behind it: a route that gets past the key
answers 500, one refused by it 401). With runtime LoRA updating on, vLLM (0.32, as 0.33)
serves adapter loading at POST /adapters and inference at /invocations without checking the
key: why the embedded vLLM runs loraloop's guard (gateway/engine/api_key.py) and the
deployments keep every pod but the gateways away from vLLM (deploy/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

PROBE = r"""
import json, sys
from starlette.testclient import TestClient
from vllm.entrypoints.launchers.app import build_app
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "m", "--enable-lora", *sys.argv[1:]])
client = TestClient(build_app(args, ("generate",)), raise_server_exceptions=False)
calls = ["POST /adapters", "DELETE /adapters/a", "POST /invocations", "POST /v1/load_lora_adapter",
         "GET /v1/models", "GET /health", "GET /metrics"]
body = {"name": "a", "src": "/nowhere", "lora_name": "a", "lora_path": "/nowhere"}
print(json.dumps({call: client.request(*call.split(" "), json=body).status_code for call in calls}))
"""


def statuses(*vllm_args: str) -> dict[str, int]:
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_API_KEY": "s3cret",
           "VLLM_NO_USAGE_STATS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, *vllm_args], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_vllms_key_leaves_adapter_loading_open_and_loraloops_guard_closes_it() -> None:
    own = statuses()
    assert own["POST /v1/load_lora_adapter"] == own["GET /v1/models"] == 401
    # the same LoRA loading, and inference, past vLLM's key (500: no engine behind it here)
    assert own["POST /adapters"] != 401 and own["DELETE /adapters/a"] != 401 and own["POST /invocations"] != 401

    guarded = statuses("--middleware", "gateway.engine.api_key.RequireApiKey")
    assert {name: code for name, code in guarded.items() if code == 401} == {
        name: 401 for name in ("POST /adapters", "DELETE /adapters/a", "POST /invocations",
                               "POST /v1/load_lora_adapter", "GET /v1/models")}
    assert guarded["GET /metrics"] == 200  # the probes stay open (/health: 500 with no engine)
