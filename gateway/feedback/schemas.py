"""Request body of `POST /v1/feedback`: a thumb, or feedback beyond a thumb.

One request says one thing about an answer (`id`, and `choice` for an `n` > 1 answer):

    {"id": ..., "rating": "up" | "down" | 1 | -1}          a thumb
    {"preferred": ID, "other": ID}                          of two answers to the same prompt,
                                                            `preferred` is better (a DPO pair)
    {"id": ..., "preferred": 1, "other": 0}                 the same, between two choices of one answer
    {"id": ..., "edit": "the corrected answer"}             the user's correction (SFT, and a pair)
    {"id": ..., "name": "accuracy", "value": 0.8}           a named score, for apps that rate on scales
    {"id": ..., "signal": "copied" | "regenerated"}         implicit, weak: what the user did

`comment` and `user` (who gives it; default: the end user the answer was served to) go
with any of them. Sent again by the same user, a piece of feedback replaces the earlier one.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters.errors import InvalidRequest

RATINGS = {"up": 1, "down": -1, 1: 1, -1: -1}
MAX_CHOICE = 127  # vLLM's `n` is far smaller; the column is a small integer
MAX_EDIT_CHARS = 32_000


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, min_length=1, max_length=64,
                           description="The answer's id (`chatcmpl-…`, `cmpl-…`, `resp_…`).")
    choice: int = Field(0, ge=0, le=MAX_CHOICE, description="Which choice of an `n` > 1 answer.")
    rating: Literal["up", "down", 1, -1] | None = Field(None, description="Thumbs up (`up` or 1) or down (`down` "
                                                        "or -1).")
    preferred: str | int | None = Field(None, description="The better of two answers to the same prompt: an "
                                        "answer id, or a choice index of `id`.")
    other: str | int | None = Field(None, description="The worse one, likewise.")
    edit: str | None = Field(None, min_length=1, max_length=MAX_EDIT_CHARS,
                             description="The user's corrected version of the answer.")
    name: str | None = Field(None, min_length=1, max_length=64, description="A score's name.")
    value: float | None = Field(None, description="A score's value.")
    # adapters.schema.IMPLICIT_SIGNALS
    signal: Literal["copied", "regenerated"] | None = Field(None, description="What the user did with the answer: "
                                                            "a weak label.")
    comment: str | None = Field(None, description="Free text; its length limit is a setting.")
    user: str | None = Field(None, max_length=256,
                             description="Who gives it; default: the end user the answer was served to.")

    @field_validator("id", "comment", "user", "edit", "name", "preferred", "other")
    @classmethod
    def _no_nul(cls, value: str | int | None) -> str | int | None:
        # PostgreSQL cannot store NUL; one such rating would fail the batch it is written with.
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL (\\u0000) characters")
        return value

    @field_validator("preferred", "other", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        if isinstance(value, bool):  # pydantic would take `true` for choice 1
            raise ValueError("an answer id or a choice index, not a boolean")
        return value

    @field_validator("preferred", "other")
    @classmethod
    def _id_or_choice(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, str) and not 0 < len(value) <= 64:
            raise ValueError("an answer id has 1 to 64 characters")
        if isinstance(value, int) and not 0 <= value <= MAX_CHOICE:
            raise ValueError(f"a choice index is 0 to {MAX_CHOICE}")
        return value

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    def check(self) -> None:
        """InvalidRequest (naming the field) unless the body says exactly one thing. Not a
        pydantic model validator: its errors could not name a field."""
        given = [kind for kind, present in (
            ("rating", self.rating is not None), ("preferred", self.preferred is not None or self.other is not None),
            ("edit", self.edit is not None), ("name", self.name is not None or self.value is not None),
            ("signal", self.signal is not None)) if present]
        if len(given) != 1:
            raise InvalidRequest("give exactly one of: rating, preferred + other, edit, name + value, signal"
                                 + (f" (got {', '.join(given)})" if given else ""),
                                 param=given[1] if len(given) > 1 else "rating")
        if given == ["name"] and (self.name is None or self.value is None):
            raise InvalidRequest("a score needs both name and value", param="value" if self.value is None else "name")
        if given == ["preferred"]:
            self._check_preference()
        elif self.id is None:
            raise InvalidRequest("id: field required", param="id")

    def _check_preference(self) -> None:
        preferred, other = self.preferred, self.other
        if preferred is None or other is None:
            raise InvalidRequest("a preference needs both preferred and other",
                                 param="other" if other is None else "preferred")
        if isinstance(preferred, int) != isinstance(other, int):
            raise InvalidRequest("preferred and other are both answer ids or both choice indexes", param="other")
        if isinstance(preferred, int):
            if self.id is None:
                raise InvalidRequest("id: field required (the answer whose choices preferred and other index)",
                                     param="id")
            if preferred == other:
                raise InvalidRequest("preferred and other must be different choices", param="other")
        else:
            if self.id is not None and self.id != preferred:
                raise InvalidRequest("with answer ids in preferred and other, leave id out", param="id")
            if self.choice:
                raise InvalidRequest("with answer ids in preferred and other, `choice` means nothing: prefer "
                                     "choices of one answer with `id` and two choice indexes", param="choice")
            if preferred == other:
                raise InvalidRequest("preferred and other must be different answers", param="other")

    @property
    def kind(self) -> str:
        """rating | preference | edit | score | copied | regenerated"""
        if self.rating is not None:
            return "rating"
        if self.preferred is not None or self.other is not None:
            return "preference"
        if self.edit is not None:
            return "edit"
        return "score" if self.name is not None else str(self.signal)

