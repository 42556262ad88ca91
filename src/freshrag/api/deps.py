"""FastAPI dependencies: the services from the lifespan and the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from freshrag.api.auth import BadPrincipals, Caller, Unauthorized, resolve_caller
from freshrag.api.errors import api_error
from freshrag.api.services import Services
from freshrag.core.principals import PRINCIPALS_HEADER


async def get_services(request: Request) -> Services:  # async: no threadpool hop
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_caller(request: Request, services: ServicesDep) -> Caller:
    s = services.settings
    try:
        return resolve_caller(
            request.headers.get("authorization"),
            s.api_keys,
            s.auth_enabled,
            request.headers.get(PRINCIPALS_HEADER),
            s.trust_principals_header,
        )
    except Unauthorized as exc:
        raise api_error(
            401, "unauthorized", exc.message, headers={"WWW-Authenticate": "Bearer"}
        ) from None
    except BadPrincipals as exc:
        raise api_error(400, "invalid_principals", exc.message, field=PRINCIPALS_HEADER) from None


CallerDep = Annotated[Caller, Depends(get_caller)]
