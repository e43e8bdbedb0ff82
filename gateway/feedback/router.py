"""`POST /v1/feedback`: rate a completion this key's tenant received."""

from __future__ import annotations

from fastapi import APIRouter

from adapters.errors import InvalidRequest, NotFound
from adapters.feedback import Rating
from gateway.deps import Caller, State
from gateway.feedback.schemas import RATINGS, FeedbackRequest, FeedbackResponse

router = APIRouter(prefix="/v1")


@router.post("/feedback", response_model=FeedbackResponse)
async def post_feedback(body: FeedbackRequest, state: State, caller: Caller) -> FeedbackResponse:
    limit = state.settings.feedback_comment_max_chars
    if body.comment is not None and len(body.comment) > limit:
        raise InvalidRequest(f"comment: at most {limit} characters, got {len(body.comment)}", param="comment")
    value = RATINGS[body.rating]
    result = await state.ratings.submit(Rating(body.id, body.user, value, body.comment, caller.tenant))
    if not result.stored:
        # Also for another tenant's completion: its existence is not this caller's business.
        raise NotFound(f"No completion with id {body.id!r} was served to this API key's tenant.", param="id")
    return FeedbackResponse(id=body.id, rating="up" if value > 0 else "down", user=result.end_user,
                            replaced=result.replaced)
