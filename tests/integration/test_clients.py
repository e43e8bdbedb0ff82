"""Clients nobody here wrote, unchanged, against the gateway on real vLLM: the official
`openai` Node SDK (from npm: chat, responses, feedback through plain fetch) and an agent
framework (`openai-agents`) completing a short tool-using exchange."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import httpx
import pytest

from tests.integration.conftest import LiveGateway
from tests.integration.test_responses_api import stored

pytestmark = pytest.mark.integration

NODE = Path(__file__).resolve().parent.parent / "node"


@pytest.mark.skipif(shutil.which("node") is None or not (NODE / "node_modules" / "openai").is_dir(),
                    reason="needs Node.js and the openai Node SDK (deploy/local/install.sh installs it with npm)")
def test_the_official_node_sdk(gateway: LiveGateway) -> None:
    out = subprocess.run(["node", str(NODE / "contract.mjs")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "LORALOOP_URL": gateway.url, "LORALOOP_KEY": gateway.app_key})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["chat"]["id"].startswith("chatcmpl-") and seen["chat"]["text"]
    assert seen["response"]["id"].startswith("resp_") and seen["response"]["text"]
    streamed = seen["streamed"]
    assert streamed["last"] == "response.completed" and "response.output_text.delta" in streamed["types"]
    assert streamed["previous"] == seen["response"]["id"] and streamed["text"]
    assert seen["ratings"] == [200, 200, 200]
    row = stored(gateway, streamed["id"])
    assert row is not None and row.ratings == 1 and row.response == streamed["text"]


def test_an_agent_framework_completes_a_tool_using_exchange(gateway: LiveGateway, demo_model: Path) -> None:
    agents = pytest.importorskip("agents", reason="openai-agents is in the dev extra")
    from openai import AsyncOpenAI
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    whitespace = [i for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip()]

    agents.set_tracing_disabled(True)
    asked: list[str] = []

    @agents.function_tool
    def oven_temperature(room: Literal["kitchen", "bakery"]) -> str:
        """The temperature of the oven in a room."""
        asked.append(room)
        return "180 C"

    client = AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.app_key, max_retries=0,
                         http_client=httpx.AsyncClient(timeout=120))
    agent = agents.Agent(
        name="baker", instructions="Answer with the oven tool.", tools=[oven_temperature],
        # Chat Completions: there vLLM forces a `required` tool call by decoding to the tools'
        # schema; its Responses API (0.32) lets a model that knows no tools answer in text.
        model=agents.OpenAIChatCompletionsModel("default", client),
        # The demo model knows no tools: the call is forced (vLLM decodes it to the tool's
        # schema, where JSON allows whitespace anywhere: the demo model would pad it until
        # its tokens ran out, so its whitespace tokens are banned), and the tool's answer ends
        # the run.
        model_settings=agents.ModelSettings(tool_choice="required", max_tokens=128, temperature=0,
                                            extra_body={"logit_bias": {str(t): -100 for t in whitespace}}),
        tool_use_behavior="stop_on_first_tool")
    result = agents.Runner.run_sync(agent, "How hot is the oven in the kitchen?")
    assert len(asked) == 1 and result.final_output == "180 C"
    [call] = result.raw_responses[0].output
    assert call.type == "function_call" and json.loads(call.arguments)["room"] in ("kitchen", "bakery")
    response_id = call.provider_data["response_id"]  # the chat completion's id
    row = stored(gateway, response_id)
    assert row is not None and row.kind == "chat" and row.prompt[0] == {
        "role": "system", "content": "Answer with the oven tool."}
    rated = httpx.post(f"{gateway.url}/v1/feedback", json={"id": response_id, "rating": "up"},
                       headers={"authorization": f"Bearer {gateway.app_key}"}, timeout=30)
    assert rated.status_code == 200
