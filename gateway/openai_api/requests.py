"""Reading and checking completion request bodies before they cost an upstream anything.

Only the fields the gateway relies on are checked here (it must route, stream and attribute
correctly); the rest is vLLM's to validate, and its 400s pass through in the same shape.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import anyio
from starlette.requests import Request

from adapters.errors import InvalidRequest, RequestTooLarge
from adapters.schema import Interaction

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
    # the Responses API's own
    "max_output_tokens": ((int,), "an integer"),
    "instructions": ((str,), "a string"),
    "previous_response_id": ((str,), "a string (the id of a response this key's tenant received)"),
    "store": ((bool,), "a boolean"),
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


OFF_LOOP_BYTES = 64 << 10  # larger bodies are parsed in a worker thread
_parsers: anyio.CapacityLimiter | None = None


async def parse_completion_request_async(raw: bytes, kind: str) -> dict[str, Any]:
    """`parse_completion_request`, in a worker thread for large bodies: parsing and checking
    4 MiB takes about a second, which on the event loop would stall every other request (and
    the health probes). At most two run at once, so they cannot take the thread pool either."""
    global _parsers
    if len(raw) <= OFF_LOOP_BYTES:
        return parse_completion_request(raw, kind)
    if _parsers is None:
        _parsers = anyio.CapacityLimiter(2)
    return await anyio.to_thread.run_sync(parse_completion_request, raw, kind, limiter=_parsers)


def parse_completion_request(raw: bytes, kind: str) -> dict[str, Any]:
    """The parsed body of a chat (`kind="chat"`), text completion (`"completions"`) or
    Responses API (`"responses"`) request, or InvalidRequest."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    if "model" not in body:
        raise InvalidRequest("model: field required", param="model")
    for name, (types, human) in CHECKED_FIELDS.items():
        if name in body and body[name] is not None:
            value = body[name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise InvalidRequest(f"{name}: must be {human}, got {type(value).__name__}",
                                     param=name)
    _check_lengths(body)
    if kind == "chat":
        _check_messages(body.get("messages"))
    elif kind == "responses":
        _check_responses_input(body)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
            raise InvalidRequest("prompt: must be a string or a non-empty list", param="prompt")
    return body


# A JSON escape that can leave a string unstorable: NUL, or a UTF-16 surrogate (a lone one
# survives json.loads, then fails to encode as UTF-8 in SQLite and psycopg).
_SUSPECT = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def parse_json(raw: bytes) -> Any:
    """`raw` parsed, or InvalidRequest for what no later step could store or forward:
    invalid JSON, NaN/Infinity or overflowing floats, nesting deeper than MAX_DEPTH,
    NUL characters and lone surrogates. Checked once at the door, so the interaction log
    and the feedback writer only ever see values the database accepts."""
    try:
        # Strict UTF-8 first: json.loads(bytes) would also take UTF-16/32 and let surrogates
        # encoded in the bytes themselves through (it decodes with "surrogatepass").
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid UTF-8 ({exc.reason} at byte {exc.start}).") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidRequest(f"Request body is nested too deeply (at most {MAX_DEPTH} levels).") from None
    except ValueError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    if _SUSPECT.search(text) or text.count("[") + text.count("{") > MAX_DEPTH:
        check_storable(value)  # the exact walk, only when the text hints at a problem
    return value


MAX_DEPTH = 64  # OpenAI bodies nest a few levels (content parts, JSON schemas a few more)
MAX_CONTAINERS = 100_000  # objects and arrays in one body: thousands at most in real ones


def check_storable(value: Any) -> None:
    """InvalidRequest unless every string in `value` is storable text and it nests at most
    MAX_DEPTH levels. Iterative: a hostile body cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    containers = 0
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"Request body is nested too deeply (at most {MAX_DEPTH} levels).")
        if isinstance(item, str):
            _check_text(item)
            continue
        if isinstance(item, (dict, list)):
            containers += 1
            if containers > MAX_CONTAINERS:
                raise InvalidRequest(f"Request body has more than {MAX_CONTAINERS} objects and arrays.")
        if isinstance(item, dict):
            for key, child in item.items():
                _check_text(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise InvalidRequest("Strings may not contain NUL (\\u0000) characters.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("Strings must be valid Unicode: a lone UTF-16 surrogate (\\ud800-\\udfff) "
                             "cannot be stored.") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


# What the interaction log stores of them has room for this much (adapters/schema.py).
MAX_LENGTHS = {"user": Interaction.end_user.type.length, "regenerates": Interaction.regenerates.type.length,
               "previous_response_id": Interaction.id.type.length}


def _check_lengths(body: dict[str, Any]) -> None:
    for name, limit in MAX_LENGTHS.items():
        check_length(name, body.get(name), limit)


def check_length(name: str, value: object, limit: int) -> None:
    """InvalidRequest when string `value` (a body field or header) is longer than `limit`."""
    if isinstance(value, str) and len(value) > limit:
        raise InvalidRequest(f"{name}: at most {limit} characters, got {len(value)}", param=name)


def _check_responses_input(body: dict[str, Any]) -> None:
    value = body.get("input")
    if not isinstance(value, (str, list)) or (isinstance(value, list) and not value):
        raise InvalidRequest("input: must be a string or a non-empty array of input items", param="input")
    if isinstance(value, list) and not all(isinstance(item, dict) for item in value):
        raise InvalidRequest("input: each input item must be an object", param="input")
    if body.get("previous_response_id") == "":
        raise InvalidRequest("previous_response_id: must be a response id, not empty", param="previous_response_id")
    if body.get("background"):
        # A background response is answered before it is generated: its text could never be
        # logged, attributed or rated, and polling for it would bypass the interaction log.
        raise InvalidRequest("background: background responses are not supported; send the request "
                             "without `background` (streamed if it is long)", param="background")


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages.{i}.role: each message must be an object with a string role",
                                 param=f"messages.{i}.role")
