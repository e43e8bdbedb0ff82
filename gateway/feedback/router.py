"""`POST /v1/feedback`: rate a completion this key's tenant received.

A plain Starlette route (validated with the pydantic schema by hand) rather than a FastAPI
one: ratings arrive in thousands per second and FastAPI's per-request dependency resolution
and response-model serialisation were most of the cost (bench/README.md).
"""

from __future__ import annotations

import pydantic
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.errors import InvalidRequest, NotFound
from adapters.feedback import Rating
from gateway.auth import client_address
from gateway.errors import invalid_request
from gateway.feedback.schemas import RATINGS, FeedbackRequest
from gateway.openai_api.requests import read_body
from gateway.state import GatewayState

router = APIRouter()


async def post_feedback(request: Request) -> JSONResponse:
    state: GatewayState = request.app.state.gateway
    caller = await state.auth.authenticate(request.headers.get("authorization"), client_address(request))
    try:
        body = FeedbackRequest.model_validate_json(await read_body(request, 64_000))
    except pydantic.ValidationError as exc:
        raise invalid_request(exc.errors()) from None
    limit = state.settings.feedback_comment_max_chars
    if body.comment is not None and len(body.comment) > limit:
        raise InvalidRequest(f"comment: at most {limit} characters, got {len(body.comment)}", param="comment")
    value = RATINGS[body.rating]
    result = await state.ratings.submit(Rating(body.id, body.user, value, body.comment, caller.tenant))
    if not result.stored:
        # Also for another tenant's completion: its existence is not this caller's business.
        raise NotFound(f"No completion with id {body.id!r} was served to this API key's tenant.", param="id")
    return JSONResponse({"object": "feedback", "id": body.id, "rating": "up" if value > 0 else "down",
                         "user": result.end_user, "replaced": result.replaced})


router.add_route("/v1/feedback", post_feedback, methods=["POST"])
