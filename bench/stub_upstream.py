"""A minimal fake vLLM for benchmarks: fixed answers as fast as Python can send them.

    python bench/stub_upstream.py PORT [STREAM_DELAY_S]

Raw ASGI, no framework, so that what a benchmark measures is the proxy in front of it.
Streams send 8 chunks, STREAM_DELAY_S apart (default 0).
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvicorn

CHAT = json.dumps({
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Certainly. " * 8},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28}}).encode()
CHUNK = b'data: {"id":"chatcmpl-stub","object":"chat.completion.chunk","created":0,"model":"stub",' \
        b'"choices":[{"index":0,"delta":{"content":"Certainly. "}}]}\n\n'
MODELS = json.dumps({"object": "list", "data": [{"id": "stub", "parent": None}]}).encode()
DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/v1/models":
        return await _send(send, 200, MODELS)
    if path == "/v1/load_lora_adapter":
        return await _send(send, 200, b"ok", b"text/plain")
    if path == "/health":
        return await _send(send, 200, b"")
    if b'"stream":true' in body.replace(b" ", b""):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for _ in range(8):
            if DELAY:
                await asyncio.sleep(DELAY)
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        return
    await _send(send, 200, CHAT)


async def _send(send, status: int, body: bytes, ctype: bytes = b"application/json") -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
