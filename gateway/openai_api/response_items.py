"""Responses API bodies as the chat messages the rest of loraloop stores and trains on.

A Responses request says `instructions` (the system message) and `input`: a string (one
user message) or a list of items: messages, whose content is a string or text parts, and a
tool-using exchange's `function_call` and `function_call_output` items. Other items
(reasoning, images, built-in tools) carry nothing a chat template can render and are left
out. Its answer's `output` is a list of items too; the text an end user rates is that of
its messages.
"""

from __future__ import annotations

from typing import Any

# the stream's last event, which carries the whole response
FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")
TEXT_PARTS = ("input_text", "output_text", "text")


def messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of a Responses request `body` (its instructions first)."""
    out: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        out.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        return [*out, {"role": "user", "content": items}]
    for item in items if isinstance(items, list) else []:
        kind = item.get("type", "message")
        if kind == "message" and isinstance(item.get("role"), str):
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": _text(item.get("content"))})
        elif kind == "function_call":
            out.append({"role": "assistant", "content": "", "tool_calls": [{
                "id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")}}]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": item.get("call_id"),
                        "content": output if isinstance(output, str) else _text(output)})
    return out


def continued(history: Any, answer: str | None, new: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The whole conversation of a request that continued one: the previous request's
    messages (`history`, without its instructions: they do not carry over), its `answer`,
    then this request's `new` messages, its instructions first. None without the history."""
    if not isinstance(history, list) or answer is None:
        return None
    system = [m for m in new if m.get("role") == "system"]
    rest = [m for m in new if m.get("role") != "system"]
    earlier = [m for m in history if isinstance(m, dict) and m.get("role") != "system"]
    return [*system, *earlier, {"role": "assistant", "content": answer}, *rest]


def answer(response: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    """(output text, finish reason, usage in chat terms) of a Responses API response object.
    The text is None when the answer has no message (only tool calls, say)."""
    parts = [_text(item.get("content")) for item in response.get("output") or []
             if isinstance(item, dict) and item.get("type") == "message"]
    status = response.get("status")
    reason = (response.get("incomplete_details") or {}).get("reason")
    finish = "stop" if status == "completed" else "length" if reason == "max_output_tokens" else status
    usage = response.get("usage") or {}
    return ("".join(parts) if parts else None, finish,
            {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")})


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content
                       if isinstance(part, dict) and part.get("type") in TEXT_PARTS)
    return ""
