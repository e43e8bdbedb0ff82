"""Reading and checking completion request bodies before they cost an upstream anything.

Only the fields the gateway relies on are checked here (it must route, stream and attribute
correctly); the rest is vLLM's to validate, and its 400s pass through in the same shape.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from adapters.errors import InvalidRequest, RequestTooLarge

# field -> (accepted types, human name); bool is excluded from int/float on purpose below
CHECKED_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"),
    "stream": ((bool,), "a boolean"),
    "user": ((str,), "a string"),
    "regenerates": ((str,), "a string (the id of the response this one regenerates)"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "n": ((int,), "an integer"),
    "temperature": ((int, float), "a number"),
    "top_p": ((int, float), "a number"),
    "seed": ((int,), "an integer"),
}


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"Request body is {declared} bytes; the limit is {limit}.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_completion_request(raw: bytes, kind: str) -> dict[str, Any]:
    """The parsed body of a chat (`kind="chat"`) or text completion request, or InvalidRequest."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    if b"\\u0000" in raw and _has_nul(body):  # fast test on the bytes, exact test if they hint at one
        raise InvalidRequest("Strings may not contain NUL (\\u0000) characters.")
    if "model" not in body:
        raise InvalidRequest("model: field required", param="model")
    for name, (types, human) in CHECKED_FIELDS.items():
        if name in body and body[name] is not None:
            value = body[name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise InvalidRequest(f"{name}: must be {human}, got {type(value).__name__}",
                                     param=name)
    if kind == "chat":
        _check_messages(body.get("messages"))
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
            raise InvalidRequest("prompt: must be a string or a non-empty list", param="prompt")
    return body


def _has_nul(value: object) -> bool:
    """PostgreSQL cannot store NUL in text: such a request would be served and never logged."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages.{i}.role: each message must be an object with a string role",
                                 param=f"messages.{i}.role")
