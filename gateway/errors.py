"""The one mapping from exceptions to HTTP errors, every body in the OpenAI shape:

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from adapters import errors as e
from adapters.db import is_outage

log = logging.getLogger(__name__)

# exception class -> (status, OpenAI error type, code); the first matching class wins.
MAPPING: list[tuple[type[Exception], int, str, str | None]] = [
    (e.Unauthenticated, 401, "authentication_error", "invalid_api_key"),
    (e.Forbidden, 403, "permission_error", "insufficient_scope"),
    (e.ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (e.NotFound, 404, "not_found_error", "not_found"),
    (e.RateLimited, 429, "requests", "rate_limit_exceeded"),  # OpenAI's own type for request limits
    (e.RequestTooLarge, 413, "invalid_request_error", "request_too_large"),
    (e.InvalidRequest, 400, "invalid_request_error", "invalid_request"),
    (e.InvalidAdapter, 400, "invalid_request_error", "invalid_adapter"),
    (e.InvalidTransition, 409, "invalid_request_error", "invalid_transition"),
    (e.StoreUnavailable, 503, "service_unavailable", "response_store_unavailable"),
    (e.NoHealthyUpstream, 503, "service_unavailable", "no_healthy_upstream"),
    (e.LogQueueFull, 503, "service_unavailable", "interaction_log_full"),
    (e.NotStoredYet, 503, "service_unavailable", "answer_not_stored_yet"),
    (e.UpstreamTimeout, 504, "timeout", "upstream_timeout"),
    (e.AdapterLoadFailed, 502, "api_error", "adapter_load_failed"),
    (e.UpstreamError, 502, "api_error", "bad_upstream"),
]


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: Exception, retry_after_s: int = 5) -> JSONResponse:
    for cls, status, type_, code in MAPPING:
        if isinstance(exc, cls):
            assert isinstance(exc, e.LoraloopError)
            headers = {"Retry-After": str(retry_after_s)} if status == 503 else None
            if status == 401:
                headers = {"WWW-Authenticate": "Bearer"}
            if isinstance(exc, e.RateLimited):
                headers = {"Retry-After": str(exc.retry_after_s)}
            return JSONResponse(error_body(exc.message, type_, code, exc.param), status, headers)
    if isinstance(exc, DataError):  # e.g. a NUL character, which PostgreSQL cannot store
        message = "A value in the request cannot be stored (for example a NUL character)."
        return JSONResponse(error_body(message, "invalid_request_error", "invalid_request"), 400)
    if is_outage(exc):  # the database is down, restarting or out of connections
        orig = getattr(exc, "orig", None)
        log.warning("database unavailable: %s", type(orig or exc).__name__)
        message = "The database is unavailable for a moment; nothing was stored. Retry shortly."
        return JSONResponse(error_body(message, "service_unavailable", "database_unavailable"), 503,
                            {"Retry-After": str(retry_after_s)})
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal server error", "api_error", "internal_error"), 500)


def invalid_request(errors: list) -> e.InvalidRequest:  # type: ignore[type-arg]
    """The first pydantic error as an InvalidRequest that names the field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = ".".join(str(p) for p in first["loc"] if p != "body") or None
    return e.InvalidRequest(f"{field}: {first['msg']}" if field else str(first["msg"]), param=field)


def install_handlers(app: FastAPI, retry_after_s: int) -> None:
    async def on_domain(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, retry_after_s)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), type_), exc.status_code, exc.headers)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(invalid_request(list(exc.errors())), retry_after_s)

    app.add_exception_handler(e.LoraloopError, on_domain)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_domain)
