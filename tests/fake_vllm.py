"""A fake vLLM fleet for unit tests, served through `httpx.MockTransport`.

It answers what the gateway uses of vLLM's API (models, runtime LoRA loading, completions,
SSE streaming) and records every request, so tests can assert what reached the engine.
Replicas can be taken down (connection refused) or made slow (read timeout), answer
completions 502/503/504, refuse or hang adapter loads, take their time over an answer (and
count the requests cancelled meanwhile), or stream long answers.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import httpx

BASE = "fake-base"


@dataclass
class FakeReplica:
    url: str
    down: bool = False
    slow: bool = False
    slow_probes: bool = False  # /v1/models times out (a replica too busy to answer)
    break_next: int = 0  # this many completion requests end with the connection dropped
    error_next: int = 0  # this many completion requests are answered `error_status`
    error_status: int = 503
    refuse_loads: bool = False  # load_lora_adapter answers 500
    hang_loads: bool = False  # load_lora_adapter never answers
    # a refused load says this, {path} being the adapter's path (vLLM's errors name it)
    refuse_message: str = "cannot load: disk full"
    answer_delay_s: float = 0.0  # a non-streamed answer takes this long (vLLM answers when done)
    aborted: int = 0  # completion requests cancelled (the gateway closed them) before the answer
    stream_words: int = 0  # a streamed answer has this many words (0: the short default answer)
    loaded: dict[str, str] = field(default_factory=dict)
    seen: list[dict] = field(default_factory=list)  # bodies of completion requests
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    stored: dict[str, dict] = field(default_factory=dict)  # the Responses API's store (per replica, as vLLM's)

    def restart(self) -> None:
        self.loaded.clear()
        self.stored.clear()


class FakeFleet:
    def __init__(self, n: int = 2):
        self.replicas = {f"http://r{i}:8000": FakeReplica(f"http://r{i}:8000") for i in range(n)}
        self.completion_error: httpx.Response | None = None  # answer every completion with this

    @property
    def urls(self) -> list[str]:
        return list(self.replicas)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        replica = self.replicas[f"{request.url.scheme}://{request.url.host}:{request.url.port}"]
        if replica.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/v1/models":
            if replica.slow_probes:
                raise httpx.ReadTimeout("timed out", request=request)
            data = [{"id": BASE, "parent": None}] + [{"id": n, "parent": BASE} for n in replica.loaded]
            return httpx.Response(200, json={"object": "list", "data": data})
        if path == "/v1/unload_lora_adapter":
            name = json.loads(request.content)["lora_name"]
            if replica.loaded.pop(name, None) is None:
                return httpx.Response(404, json={"error": {"message": f"{name} not found"}})
            replica.unloads.append(name)
            return httpx.Response(200, text="ok")
        if path == "/v1/load_lora_adapter":
            body = json.loads(request.content)
            if replica.hang_loads:
                await asyncio.Event().wait()  # until the caller gives up (cancels)
            if replica.refuse_loads:
                message = replica.refuse_message.format(path=body["lora_path"])
                return httpx.Response(500, json={"error": {"message": message}})
            if body["lora_name"] in replica.loaded:
                return httpx.Response(400, json={"error": {"message": "already been loaded"}})
            replica.loaded[body["lora_name"]] = body["lora_path"]
            replica.loads.append(body["lora_name"])
            return httpx.Response(200, text="ok")
        if path.startswith("/v1/responses/"):
            response_id = path.split("/")[3]
            if response_id not in replica.stored:
                return _not_stored(response_id)
            return httpx.Response(200, json=replica.stored[response_id])
        if path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
            if replica.slow:
                raise httpx.ReadTimeout("timed out", request=request)
            if replica.break_next:
                replica.break_next -= 1
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.",
                                                request=request)
            if self.completion_error is not None:
                return self.completion_error
            if replica.error_next:
                replica.error_next -= 1
                return httpx.Response(replica.error_status, text="upstream unavailable")
            body = json.loads(request.content)
            replica.seen.append(body)
            if body["model"] != BASE and body["model"] not in replica.loaded:
                return httpx.Response(404, json={"error": {"message": f"The model `{body['model']}` does not exist.",
                                                           "type": "NotFoundError", "param": "model", "code": 404}})
            if path == "/v1/responses":
                return _respond(replica, body)
            rid = request.headers["x-request-id"]
            chat = path.endswith("chat/completions")
            text = f"answer from {body['model']} on {replica.url}"
            if body.get("stream"):
                if replica.stream_words:
                    text = " ".join(f"word{i}" for i in range(replica.stream_words))
                usage = bool((body.get("stream_options") or {}).get("include_usage"))
                return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                      content=_sse(rid, body["model"], text, chat, usage, body.get("n") or 1))
            if replica.answer_delay_s:
                try:
                    await asyncio.sleep(replica.answer_delay_s)
                except asyncio.CancelledError:  # what vLLM sees as the client going away
                    replica.aborted += 1
                    raise
            texts = [text] + [f"{text} (choice {k})" for k in range(1, body.get("n") or 1)]
            choices = [{"index": k, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                       if chat else {"index": k, "text": t, "finish_reason": "stop"} for k, t in enumerate(texts)]
            return httpx.Response(200, json={
                "id": ("chatcmpl-" if chat else "cmpl-") + rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": 0, "model": body["model"], "choices": choices,
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})
        return httpx.Response(404, json={"detail": "Not Found"})


async def _sse(rid: str, model: str, text: str, chat: bool, usage: bool = False, choices: int = 1):
    words = text.split(" ")
    for n, word in enumerate(words):
        for index in range(choices):  # choice k says "k:" before each word
            said = f"{index}:{word} " if index else word + " "
            delta = {"index": index, "delta": {"content": said}} if chat else {"index": index, "text": said}
            if n == len(words) - 1:
                delta["finish_reason"] = "stop"
            chunk = {"id": ("chatcmpl-" if chat else "cmpl-") + rid, "object": "chat.completion.chunk",
                     "created": 0, "model": model, "choices": [delta]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
    if usage:  # as vLLM does with stream_options.include_usage: a last chunk without choices
        chunk = {"id": ("chatcmpl-" if chat else "cmpl-") + rid, "object": "chat.completion.chunk",
                 "created": 0, "model": model, "choices": [],
                 "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _respond(replica: FakeReplica, body: dict) -> httpx.Response:
    """A Responses API answer, stored on this replica unless `store` is false (as vLLM with
    VLLM_ENABLE_RESPONSES_API_STORE=1)."""
    previous = body.get("previous_response_id")
    if previous is not None and previous not in replica.stored:
        return _not_stored(previous)
    rid = body.get("request_id") or "resp_fake"
    text = f"answer from {body['model']} on {replica.url}"
    response = {"id": rid, "object": "response", "created_at": 0, "model": body["model"], "status": "completed",
                "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
                "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12},
                "previous_response_id": previous}
    if body.get("store", True):
        replica.stored[rid] = response
    if not body.get("stream"):
        return httpx.Response(200, json=response)
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_response_events(response, text))


async def _response_events(response: dict, text: str):
    events = [{"type": "response.created", "response": {**response, "status": "in_progress", "output": []}}]
    events += [{"type": "response.output_text.delta", "delta": word + " "} for word in text.split(" ")]
    events.append({"type": "response.completed", "response": response})
    for n, event in enumerate(events):
        yield f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': n})}\n\n".encode()


def _not_stored(response_id: str) -> httpx.Response:
    return httpx.Response(404, json={"error": {"message": f"Response with id '{response_id}' not found.",
                                               "type": "invalid_request_error", "param": None, "code": 404}})
