"""FastAPI dependencies, as `Annotated` aliases routes can name in their signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.auth import Principal, client_address, require_admin
from gateway.state import GatewayState


def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


async def get_principal(request: Request) -> Principal:
    state: GatewayState = request.app.state.gateway
    return await state.auth.authenticate(request.headers.get("authorization"), client_address(request))


async def get_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    return require_admin(principal)


State = Annotated[GatewayState, Depends(get_state)]
Caller = Annotated[Principal, Depends(get_principal)]
Admin = Annotated[Principal, Depends(get_admin)]
