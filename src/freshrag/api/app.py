"""The FastAPI app factory. Clients are built in the lifespan, never at import time."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from freshrag import __version__
from freshrag.api import page
from freshrag.api.errors import install_error_handlers
from freshrag.api.freshness import install_metrics as install_freshness_metrics
from freshrag.api.limits import Limits
from freshrag.api.mcp_server import mount as mount_mcp
from freshrag.api.routes import chat, documents, freshness, health, openai_compat, search
from freshrag.api.services import Services, build_services
from freshrag.core.settings import Settings, load_settings

log = logging.getLogger("freshrag.api")
BODY_SLACK = 64 * 1024


class BodySizeLimit:
    """413 for bodies over the limit, by header or by counting streamed bytes."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # chunked: no length up front; FastAPI re-raises
                    raise _TooLarge(self.max_bytes)  # an HTTPException from reading the body
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"error": _TooLarge(self.max_bytes).detail}, status_code=413)
        await response(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    """413 from inside the body stream: FastAPI turns other errors there into a 400."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            {  # type: ignore[arg-type]  # our handler renders a dict detail as the error body
                "type": "payload_too_large",
                "field": "body",
                "message": f"request body is over the {max_bytes}-byte limit",
            },
        )


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """Build the app. Pass `services` when the caller owns the store/embedder (freshrag up,
    tests); otherwise the lifespan builds them from settings and closes them at shutdown."""
    settings = settings or (services.settings if services else load_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.auth_enabled:
            log.warning(
                "API authentication is OFF (FRESHRAG_AUTH_ENABLED=false): every caller is "
                "tenant 'default'. Never run like this outside a local demo."
            )
        elif not settings.api_keys:
            log.warning("no API keys configured (FRESHRAG_API_KEYS): every request gets 401")
        built = services or build_services(settings)
        app.state.services = built
        app.state.limits = Limits(settings, getattr(built, "watermarks", None))
        install_freshness_metrics(built)  # lag and latency figures on /metrics
        try:
            async with app.state.mcp.running():  # the MCP session manager of `/mcp`
                yield
        finally:
            app.state.limits.close()
            if services is None:
                built.close()

    app = FastAPI(
        title="freshrag",
        version=__version__,
        description="Fresh, grounded, cited answers from a continuously updated index.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_document_bytes + BODY_SLACK)

    @app.middleware("http")
    async def record_latency(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        svc = getattr(request.app.state, "services", None)
        if svc is not None:
            svc.metrics.requests.labels(request.method, path, str(response.status_code)).observe(
                time.perf_counter() - started
            )
        return response

    install_error_handlers(app)  # our error shapes (OpenAI's on its routes) and their OpenAPI

    for module in (search, chat, openai_compat, documents, health, page, freshness):
        app.include_router(module.router)
    # MCP over streamable HTTP at /mcp: the same keys, tenants, bounds and error bodies
    app.state.mcp = mount_mcp(app, settings.max_document_bytes + BODY_SLACK)

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for `freshrag serve`: settings from the environment."""
    return create_app(load_settings())
