"""`POST /v1/feedback`: feedback on an answer this key's tenant received (schemas.py: a
thumb, a preference between two answers, an edit, a named score, an implicit signal).

A plain Starlette route (validated with the pydantic schema by hand) rather than a FastAPI
one: ratings arrive in thousands per second and FastAPI's per-request dependency resolution
and response-model serialisation were most of the cost (bench/README.md).
"""

from __future__ import annotations

from dataclasses import replace

import pydantic
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.errors import InvalidRequest, NotFound
from adapters.feedback import Rating
from adapters.signals import SignalIn
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
    body.check()
    limit = state.settings.feedback_comment_max_chars
    if body.comment is not None and len(body.comment) > limit:
        raise InvalidRequest(f"comment: at most {limit} characters, got {len(body.comment)}", param="comment")
    feedback = _feedback(body, caller.tenant)
    result = await state.ratings.submit(feedback)
    if result.invalid:
        raise InvalidRequest(result.invalid, param=result.invalid.split(":")[0] if ":" in result.invalid else None)
    if not result.stored:
        # Also for another tenant's answer: its existence is not this caller's business.
        ids = " or ".join(repr(i) for i in (feedback.ids if isinstance(feedback, SignalIn) else (body.id,)))
        raise NotFound(f"No answer with id {ids} was served to this API key's tenant.", param="id")
    answer: dict = {"object": "feedback", "id": feedback.interaction_id, "kind": body.kind, "user": result.end_user,
                    "replaced": result.replaced}
    if isinstance(feedback, Rating):
        answer["rating"] = "up" if feedback.rating > 0 else "down"
    return JSONResponse(answer)


def _feedback(body: FeedbackRequest, tenant: str) -> Rating | SignalIn:
    if body.rating is not None:
        return Rating(str(body.id), body.user, RATINGS[body.rating], body.comment, tenant, body.choice)
    signal = SignalIn(str(body.id), body.choice, body.kind, body.user, tenant, comment=body.comment)
    if body.kind == "preference":
        if isinstance(body.preferred, int) and isinstance(body.other, int):  # two choices of `id`
            return replace(signal, choice=body.preferred, other_id=signal.interaction_id, other_choice=body.other)
        return replace(signal, interaction_id=str(body.preferred), choice=0, other_id=str(body.other))
    if body.kind == "edit":
        return replace(signal, text=body.edit)
    if body.kind == "score":
        return replace(signal, name=str(body.name), value=body.value)
    return signal


router.add_route("/v1/feedback", post_feedback, methods=["POST"])
