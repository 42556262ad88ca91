"""Error bodies and their OpenAPI description: one shape per route family, never a bare 500.

freshrag routes answer `{"error": {"type", "message", "field"?, ...}}`. The OpenAI-compatible
routes (`/v1/chat/completions`, `/v1/models`) answer OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`, so OpenAI clients raise their usual errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")
# What FastAPI raises (as a 400) when it cannot read a body at all; invalid JSON is a 422.
_FASTAPI_BODY_ERROR = "There was an error parsing the body"
_OPENAI_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


def api_error(
    status: int,
    kind: str,
    message: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> HTTPException:
    """The one way a route builds an error: `{"error": {"type", "message", "field"?, ...}}`
    (the handlers below turn it into OpenAI's shape on the OpenAI paths). Raise the result."""
    error: dict[str, Any] = {"type": kind}
    if field is not None:
        error["field"] = field
    error.update(extra)
    error["message"] = message
    return HTTPException(status, error, headers=dict(headers) if headers else None)


def invalid_input(field: str, message: str) -> HTTPException:
    """422 naming the offending field."""
    return api_error(422, "invalid", message, field=field)


def is_openai_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPENAI_PATHS)


def openai_error(status: int, error: dict[str, Any]) -> dict[str, Any]:
    """Our error dict in OpenAI's shape; extra keys (upstream, details) are kept."""
    kind = error.get("type")
    if kind in (None, "invalid", "http_error"):
        kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {
        **error,
        "message": str(error.get("message", "")),
        "type": kind,
        "param": error.get("param", error.get("field")),
        "code": error.get("code", error.get("type")),
    }


def error_response(
    request: Request,
    status: int,
    error: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    if is_openai_path(request.url.path):
        error = openai_error(status, error)
    return JSONResponse({"error": error}, status_code=status, headers=headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail: Any = exc.detail
    if exc.status_code == 400 and detail == _FASTAPI_BODY_ERROR:  # e.g. bytes that are not UTF-8
        error = {"type": "invalid", "field": "body", "message": "body is not UTF-8 JSON"}
        return error_response(request, 422, error)
    error = dict(detail) if isinstance(detail, dict) else {"type": "http_error", "message": detail}
    return error_response(request, exc.status_code, error, exc.headers)


async def invalid(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the first offending field (dotted path inside the body), all of them in
    `details`. The offending input is never echoed (it may hold a secret)."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    message = f"{field}: {first.get('msg', 'invalid value')}"
    details = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg")}
        for e in errors
    ]
    error = {"type": "invalid", "field": field, "message": message, "details": details}
    return error_response(request, 422, error)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.openapi = lambda: openapi_with_errors(app)  # type: ignore[method-assign]


# --- OpenAPI: the error answers every route can give, with the body they carry ---------------

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "upstream": {"type": "string"},
            },
        },
        "sources": {"type": "array", "items": {"type": "object"}},
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_COMMON = {
    "413": "body or document over the size limit",
    "422": "invalid input; `error.field` names it",
}
_AUTHED = {"401": "missing or unknown API key", "429": "too many requests in flight; Retry-After"}
_BY_PATH = {
    "/v1/chat": {"502": "the LLM rejected the request", "503": "the LLM is unavailable"},
    "/v1/chat/completions": {
        "404": "unknown model",
        "502": "the LLM rejected the request",
        "503": "the LLM is unavailable",
    },
    "/v1/search": {"501": "no watermarks for consistency_token", "504": "consistency timeout"},
    "/v1/documents": {
        "409": "the first request with this Idempotency-Key is still in flight",
        "503": "Kafka unavailable or writes disabled",
    },
    "/v1/documents/{doc_id}": {
        "404": "not indexed (or another tenant's)",
        "409": "the first request with this Idempotency-Key is still in flight",
        "503": "Kafka unavailable or writes disabled",
    },
    "/readyz": {"503": "store or Kafka not ready"},
}
_STREAMING = ("/v1/chat", "/v1/chat/completions")


def _sse(path: str) -> dict[str, Any]:
    """One server-sent event: /v1/chat names its events and sends JSON data; the OpenAI route
    sends unnamed `chat.completion.chunk` JSON events, then `[DONE]`."""
    if path == "/v1/chat":
        event: dict[str, Any] = {"enum": ["sources", "token", "done", "error"]}
    else:
        event = {"enum": ["message"]}
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"event": event, "data": {"type": "string"}},
    }


def openapi_with_errors(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema with our error body in place of its `HTTPValidationError`, the
    statuses each route can answer, and the event stream the chat routes send."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in schema.get("paths", {}).items():
        public = path in ("/healthz", "/readyz", "/metrics")
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            statuses = {**_COMMON, **({} if public else _AUTHED), **_BY_PATH.get(path, {})}
            if method == "get" and not path.startswith("/v1/documents"):
                statuses.pop("413", None)
            if method == "post" and path == "/v1/search":
                statuses["503"] = "the store is unavailable"
            if path in ("/v1/search", "/v1/chat"):
                statuses.update(_BY_PATH["/v1/search"])
            for status, description in statuses.items():
                responses[status] = {
                    "description": description,
                    "content": {"application/json": {"schema": _ERROR_REF}},
                }
            if path in _STREAMING and method == "post":
                ok = responses.setdefault("200", {"description": "answer"})
                ok.setdefault("content", {})["text/event-stream"] = {"schema": _sse(path)}
    app.openapi_schema = schema
    return schema
