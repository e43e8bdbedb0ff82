"""Request and response bodies of `POST /v1/feedback`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RATINGS = {"up": 1, "down": -1, 1: 1, -1: -1}


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, description="The completion's id (`chatcmpl-…`/`cmpl-…`).")
    rating: Literal["up", "down", 1, -1] = Field(description="Thumbs up (`up` or 1) or down (`down` or -1).")
    comment: str | None = Field(None, description="Free text; its length limit is a setting.")
    user: str | None = Field(None, max_length=256,
                             description="Who rates; default: the end user the answer was served to.")

    @field_validator("id", "comment", "user")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        # PostgreSQL cannot store NUL; one such rating would fail the batch it is written with.
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL (\\u0000) characters")
        return value
