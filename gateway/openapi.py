"""The OpenAPI document, including the routes FastAPI does not know about.

The completion and feedback routes are plain Starlette routes (their per-request cost,
bench/README.md), so FastAPI cannot describe them; these models describe them instead, for
clients and for the API fuzzing in tests/unit/test_api_fuzzing.py. They document the
fields the gateway checks; everything else in an OpenAI request passes through to vLLM.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from gateway.feedback.schemas import FeedbackRequest


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(description="system, user, assistant, ...")
    content: str | None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # the rest of the OpenAI fields go to vLLM

    model: str = Field(description="The base model, an adapter version, or an alias (README: Routing).")
    stream: bool | None = None
    user: str | None = Field(None, description="The end user: sticky experiment arm, attribution of ratings.")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    regenerates: str | None = Field(None, description="Id of the answer this request regenerates (not OpenAI).")


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Common):
    prompt: str | list[str] = Field(description="Text, or a non-empty list of texts.")


class ResponseRequest(BaseModel):
    """`POST /v1/responses` (OpenAI's Responses API; vLLM checks the rest)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="The base model, an adapter version, or an alias (README: Routing).")
    input: str | list[dict[str, Any]] = Field(description="Text, or a non-empty list of input items.")
    instructions: str | None = None
    stream: bool | None = None
    user: str | None = Field(None, description="The end user: sticky experiment arm, attribution of ratings.")
    max_output_tokens: int | None = Field(None, ge=1)
    previous_response_id: str | None = Field(None, max_length=64, description="Continues a conversation this "
                                             "key's tenant had; served by the model server that stores it.")
    store: bool | None = None
    regenerates: str | None = Field(None, description="Id of the answer this request regenerates (not OpenAI).")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(BaseModel):
    error: ErrorBody


PLAIN_ROUTES = [
    ("/v1/chat/completions", "Create a chat completion (OpenAI-compatible)", ChatCompletionRequest),
    ("/v1/completions", "Create a text completion (OpenAI-compatible)", CompletionRequest),
    ("/v1/responses", "Create a response (OpenAI's Responses API; no background mode)", ResponseRequest),
    ("/v1/feedback", "Rate a completion this key's tenant received", FeedbackRequest),
]
ERRORS = {"400": "Malformed request (names the field)", "401": "Missing, invalid or revoked API key",
          "404": "Unknown model, or no such completion for this tenant", "413": "Body over the size limit",
          "429": "Over this API key's requests per minute (Retry-After)",
          "503": "No model server available, the interaction log is full, or the database is restarting "
                 "(Retry-After)",
          "504": "The model server did not answer in time"}


def install(app: FastAPI) -> None:
    """Replaces `app.openapi` with one that also describes the plain routes."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (Error, *(m for _, _, m in PLAIN_ROUTES)):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")  # type: ignore[attr-defined]
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for path, summary, model in PLAIN_ROUTES:
                schema["paths"][path] = {"post": {
                    "summary": summary, "operationId": path.strip("/").replace("/", "_"),
                    "security": [{"bearer": []}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}},
                    "responses": {"200": {"description": "OK (an SSE stream when `stream` is true)"},
                                  **{code: {"description": text, **error} for code, text in ERRORS.items()}},
                }}
            stored = {"security": [{"bearer": []}], "parameters": [
                {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The stored response (vLLM's answer)"},
                              **{code: {"description": text, **error} for code, text in ERRORS.items()}}}
            schema["paths"]["/v1/responses/{response_id}"] = {"get": {
                "summary": "A stored response this key's tenant received", "operationId": "v1_responses_get",
                **stored}}
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
