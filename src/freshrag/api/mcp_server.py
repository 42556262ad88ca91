"""The MCP server: the REST API's search, document and read-your-writes operations as MCP tools.

A thin adapter: every tool validates its arguments with the REST request models and calls the
REST route functions (or the services they use), so keys, tenants, principals, bounds and
error bodies are the REST API's. Served two ways:

- streamable HTTP at `/mcp` by the API app (`freshrag serve`, `freshrag up`); the caller is
  resolved from each HTTP request's `Authorization: Bearer <key>` header, like a REST call;
- stdio (`freshrag mcp`, for desktop clients); the caller is the key in `FRESHRAG_MCP_API_KEY`,
  resolved once at start-up the same way.

A tool that fails answers an MCP tool error (`isError`) whose text and structured content are
`{"status": <the REST status>, "error": <the REST error body>}`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import anyio
from fastapi import HTTPException
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response

from freshrag import __version__
from freshrag.api.auth import Caller, Unauthorized, resolve_caller
from freshrag.api.consistency import wait_for_token
from freshrag.api.deps import get_caller
from freshrag.api.errors import api_error
from freshrag.api.freshness import freshness_report
from freshrag.api.limits import Limits
from freshrag.api.routes import documents as document_routes
from freshrag.api.routes import search as search_route
from freshrag.api.schemas import DocumentBody, SearchBody
from freshrag.api.services import Services
from freshrag.ingest.searchable import WINDOW_S
from freshrag.retrieve.contract import DENSE_DIM, SearchFilter, Store

MCP_PATH = "/mcp"
API_KEY_ENV = "FRESHRAG_MCP_API_KEY"
FETCH_RETRIES = 5  # a document that is being rewritten right now: re-read a few times
FETCH_RETRY_S = 0.2
MAX_FETCH_POINTS = 10_000

INSTRUCTIONS = (
    "freshrag: search a continuously updated, tenant-scoped index; write documents and wait for "
    "your own writes. upsert_document/delete_document return a consistency_token: pass it to "
    "search (or wait_for) and the answer is never computed before the write is indexed."
)


class Backend:
    """Where the tools find the services, the limits and the caller."""

    def services(self) -> Services:
        raise NotImplementedError

    def limits(self) -> Limits:
        raise NotImplementedError

    def route_state(self) -> Any:
        """An object with `.state` (the REST routes keep their idempotency cache there)."""
        raise NotImplementedError

    async def caller(self, ctx: Context[Any, Any]) -> Caller:
        raise NotImplementedError


class AppBackend(Backend):
    """Streamable HTTP inside the API app: the app's services and limits; the caller comes
    from the headers of the HTTP request that carried the tool call."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def limits(self) -> Limits:
        limits: Limits = self.app.state.limits
        return limits

    def route_state(self) -> Any:
        return self.app  # idempotency keys are shared with the REST routes

    async def caller(self, ctx: Context[Any, Any]) -> Caller:
        request = ctx.request_context.request
        if not isinstance(request, Request):  # never on HTTP: refuse rather than guess
            raise api_error(401, "unauthorized", "no HTTP request carries this call")
        return await get_caller(request, self.services())


@dataclass
class FixedBackend(Backend):
    """stdio: one process, one caller (the key given at start-up)."""

    built: Services
    limits_: Limits
    caller_: Caller
    holder: Any = None

    def __post_init__(self) -> None:
        self.holder = SimpleNamespace(state=State())

    def services(self) -> Services:
        return self.built

    def limits(self) -> Limits:
        return self.limits_

    def route_state(self) -> Any:
        return self.holder

    async def caller(self, ctx: Context[Any, Any]) -> Caller:
        return self.caller_


def stdio_caller(settings: Any, environ: Mapping[str, str]) -> Caller:
    """The caller of a stdio server: `FRESHRAG_MCP_API_KEY` resolved like a bearer key.
    Raises Unauthorized (whose message never holds the key)."""
    key = environ.get(API_KEY_ENV, "")
    if not key and settings.auth_enabled:
        raise Unauthorized("not set (give it one of the FRESHRAG_API_KEYS keys)")
    return resolve_caller(
        f"Bearer {key}" if key else None, settings.api_keys, settings.auth_enabled
    )


# --- errors -------------------------------------------------------------------------------


class ToolFailure(Exception):
    """A REST error (status + body) to answer as an MCP tool error."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", ""))
        self.status = status
        self.error = error


def _from_http(exc: HTTPException) -> ToolFailure:
    detail: Any = exc.detail
    error = dict(detail) if isinstance(detail, dict) else {"type": "http_error", "message": detail}
    return ToolFailure(exc.status_code, error)


def invalid_arguments(exc: ValidationError) -> ToolFailure:
    """The REST 422 body of a validation error (`errors.invalid`): the first offending field,
    all of them in `details`, never the offending input."""
    errors = exc.errors()
    loc = errors[0]["loc"] if errors else ()
    field = ".".join(str(p) for p in loc) or "arguments"
    details = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg")}
        for e in errors
    ]
    error = {
        "type": "invalid",
        "field": field,
        "message": f"{field}: {errors[0]['msg'] if errors else 'invalid value'}",
        "details": details,
    }
    return ToolFailure(422, error)


def _result(data: dict[str, Any], *, is_error: bool = False) -> CallToolResult:
    text = json.dumps(data, ensure_ascii=False, default=str)
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=data, is_error=is_error
    )


async def _answer(work: Callable[[], Awaitable[dict[str, Any]]]) -> CallToolResult:
    try:
        return _result(await work())
    except ToolFailure as exc:
        return _result({"status": exc.status, "error": exc.error}, is_error=True)
    except HTTPException as exc:
        failure = _from_http(exc)
        return _result({"status": failure.status, "error": failure.error}, is_error=True)
    except ValidationError as exc:
        failure = invalid_arguments(exc)
        return _result({"status": failure.status, "error": failure.error}, is_error=True)


def _arguments(ctx: Context[Any, Any]) -> dict[str, Any]:
    """The tool call's arguments as the client sent them (JSON types untouched: the REST
    models validate them strictly, as they validate a REST body)."""
    params = ctx.request_context.params or {}
    raw = params.get("arguments") if isinstance(params, Mapping) else None
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ToolFailure(
            422, {"type": "invalid", "field": "arguments", "message": "arguments: not an object"}
        )
    return dict(raw)


# --- argument models of the tools that have no REST body ---------------------------------

DocId = Field(min_length=1, max_length=512, description="the document id")
IDEMPOTENCY_HELP = (
    "a retry with the same key (same tenant, same request) returns the first result without "
    "producing a second event (shared with the REST Idempotency-Key header)"
)
IdempotencyKeyField = Field(
    None, min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$", description=IDEMPOTENCY_HELP
)


class FetchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = DocId


class DeleteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = DocId
    version: int | None = Field(None, ge=0, description="defaults to the Kafka record time")
    idempotency_key: str | None = IdempotencyKeyField


class WaitArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    token: str = Field(
        min_length=1,
        max_length=2_000,
        description="a consistency_token of upsert_document/delete_document ('p:o[,p:o...]')",
    )
    timeout_s: float | None = Field(
        None,
        gt=0,
        description="wait at most this long (at most the server's FRESHRAG_CONSISTENCY_TIMEOUT_S,"
        " its default)",
    )


class IdempotencyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    idempotency_key: str | None = IdempotencyKeyField


class FreshnessArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    window_s: float | None = Field(
        None,
        gt=0,
        le=WINDOW_S,
        description=f"latency percentiles over the last window_s seconds (default and most: "
        f"{int(WINDOW_S)})",
    )


def _upsert_schema() -> dict[str, Any]:
    schema = DocumentBody.model_json_schema()
    schema["properties"]["idempotency_key"] = {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": r"^[\x21-\x7e]+$",
        "description": IDEMPOTENCY_HELP,
    }
    return schema


# --- fetch_document: the indexed text, from the chunks ------------------------------------

_WORD = re.compile(r"\S+")


def overlap_words(previous: Sequence[str], following: Sequence[str], max_words: int) -> int:
    """How many leading words of `following` repeat the end of `previous`: the longest such
    run of at most `max_words` words that leaves `following` at least one word of its own
    (the chunker starts a chunk with at most `overlap` tokens, hence words, of the previous
    one, and every chunk carries new text)."""
    longest = min(max_words, len(previous), len(following) - 1)
    for k in range(longest, 0, -1):
        if list(previous[-k:]) == list(following[:k]):
            return k
    return 0


def join_chunks(chunks: Sequence[tuple[str, str]], max_overlap: int) -> str:
    """A document's text from its chunks in order, as (heading path, text): the overlap each
    chunk repeats from the previous one of its section is dropped (word-level: the longest
    suffix/prefix match), whitespace inside a chunk is kept, and a new section starts with its
    headings as markdown lines (levels by depth in the path)."""
    out: list[str] = []
    heading: str | None = None
    words: list[str] = []
    for path, text in chunks:
        if path != heading:
            old = heading.split(" > ") if heading else []
            new = path.split(" > ") if path else []
            same = 0
            while same < min(len(old), len(new)) and old[same] == new[same]:
                same += 1
            lines = [f"{'#' * (depth + 1)} {new[depth]}" for depth in range(same, len(new))]
            if out:
                out.append("\n\n")
            if lines:
                out.append("\n\n".join(lines) + "\n\n")
            out.append(text)
            heading, words = path, text.split()
            continue
        matches = list(_WORD.finditer(text))
        k = overlap_words(words, [m.group() for m in matches], max_overlap)
        rest = text[matches[k].start() :] if k < len(matches) else ""
        if rest:
            out.append(" " + rest)
        words = words + [m.group() for m in matches[k:]]
    return "".join(out)


def _probe(store: Store) -> list[float]:
    dim = int(getattr(store, "dense_dim", DENSE_DIM))
    return [1.0] + [0.0] * (dim - 1)


def read_document(
    store: Store, caller: Caller, doc_id: str, max_overlap: int
) -> dict[str, Any] | None:
    """The indexed text of the caller's document with its version, or None when the caller's
    tenant has no such document (or none the caller may read). Raises ToolFailure (409) when
    the document's points are mid-rewrite on every try."""
    for attempt in range(FETCH_RETRIES):
        status = store.document_status(caller.tenant, doc_id, principals=caller.principals)
        if status is None:
            return None
        flt = SearchFilter(tenant=caller.tenant, doc_ids=[doc_id], principals=caller.principals)
        limit = min(MAX_FETCH_POINTS, status.chunk_count * 2 + 64)
        points = [h.payload for h in store.query_dense(_probe(store), flt, limit)]
        current = [p for p in points if int(p["version"]) == status.version]
        count = int(current[0]["chunk_count"]) if current else -1
        by_index = {int(p["chunk_index"]): p for p in current}
        if count > 0 and sorted(by_index) == list(range(count)):
            ordered = [by_index[i] for i in range(count)]
            first = ordered[0]
            return {
                "id": doc_id,
                "version": status.version,
                "updated_at": first.get("updated_at"),
                "indexed_at": status.indexed_at,
                "title": first.get("title", ""),
                "url": first.get("url"),
                "source": first.get("source"),
                "metadata": dict(first.get("metadata") or {}),
                "chunk_count": count,
                "text": join_chunks(
                    [(str(p.get("heading") or ""), str(p["text"])) for p in ordered], max_overlap
                ),
            }
        if attempt + 1 < FETCH_RETRIES:
            time.sleep(FETCH_RETRY_S)
    raise ToolFailure(
        409,
        {
            "type": "conflict",
            "message": f"document '{doc_id}' is being re-indexed right now; retry shortly",
        },
    )


# --- the server -----------------------------------------------------------------------------


def build_mcp_server(
    backend: Backend,
    lifespan: Callable[[MCPServer[Any]], AbstractAsyncContextManager[Any]] | None = None,
) -> MCPServer[Any]:
    """The MCP server with freshrag's tools over `backend`."""

    def route_call() -> tuple[Request, Response]:
        """What the REST document routes read of their request (the app's state, for the
        idempotency cache) and write to their response (`Idempotent-Replayed`)."""
        scope = {"type": "http", "headers": [], "method": "POST", "app": backend.route_state()}
        return Request(scope), Response()

    async def search(ctx: Context[Any, Any]) -> CallToolResult:
        async def work() -> dict[str, Any]:
            body = SearchBody.model_validate(_arguments(ctx))
            caller = await backend.caller(ctx)
            services = backend.services()
            out = await search_route.search(body, caller, services, backend.limits())
            return out.model_dump(mode="json")

        return await _answer(work)

    async def fetch_document(ctx: Context[Any, Any]) -> CallToolResult:
        async def work() -> dict[str, Any]:
            args = FetchArgs.model_validate(_arguments(ctx))
            caller = await backend.caller(ctx)
            services = backend.services()
            generation = services.current()
            overlap = services.settings.chunk_overlap
            if generation.manifest is not None:
                overlap = int(generation.manifest.build.get("chunk_overlap", overlap))
            doc = await run_in_threadpool(read_document, generation.store, caller, args.id, overlap)
            if doc is None:  # another tenant's, or one the caller may not read: missing
                raise api_error(404, "not_found", f"document '{args.id}' is not indexed")
            doc["generation"] = generation.name or None
            return doc

        return await _answer(work)

    async def upsert_document(ctx: Context[Any, Any]) -> CallToolResult:
        async def work() -> dict[str, Any]:
            raw = _arguments(ctx)
            key = raw.pop("idempotency_key", None)
            body = DocumentBody.model_validate(raw)
            checked = IdempotencyArgs.model_validate({"idempotency_key": key})
            caller = await backend.caller(ctx)
            services = backend.services()
            request, response = route_call()
            out = await run_in_threadpool(
                document_routes.upsert_document,
                body,
                caller,
                services,
                request,
                response,
                checked.idempotency_key,
            )
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            return {**out.model_dump(mode="json"), "replayed": replayed}

        return await _answer(work)

    async def delete_document(ctx: Context[Any, Any]) -> CallToolResult:
        async def work() -> dict[str, Any]:
            args = DeleteArgs.model_validate(_arguments(ctx))
            caller = await backend.caller(ctx)
            services = backend.services()
            request, response = route_call()
            out = await run_in_threadpool(
                document_routes.delete_document,
                args.id,
                caller,
                services,
                request,
                response,
                args.version,
                args.idempotency_key,
            )
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            return {**out.model_dump(mode="json"), "replayed": replayed}

        return await _answer(work)

    async def wait_for(ctx: Context[Any, Any]) -> CallToolResult:
        async def work() -> dict[str, Any]:
            args = WaitArgs.model_validate(_arguments(ctx))
            await backend.caller(ctx)  # a refused key waits for nothing
            services = backend.services()
            limits = backend.limits()
            bound = services.settings.consistency_timeout_s
            timeout = min(args.timeout_s or bound, bound)
            started = time.monotonic()
            with anyio.move_on_after(timeout) as scope:
                await wait_for_token(services, limits, args.token)
            if scope.cancelled_caught:
                watch = limits.watch
                raise api_error(
                    504,
                    "consistency_timeout",
                    f"index has not reached {args.token} within {timeout:g}s",
                    watermark=(watch.latest if watch is not None else None) or {},
                )
            watermark = services.watermarks() if services.watermarks is not None else {}
            return {
                "token": args.token,
                "applied": True,
                "waited_s": round(time.monotonic() - started, 3),
                "watermark": watermark,
            }

        return await _answer(work)

    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    writes = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
    deletes = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)
    specs: list[tuple[Callable[..., Any], str, dict[str, Any], ToolAnnotations]] = [
        (
            search,
            "Hybrid search of your tenant's index (the REST POST /v1/search). With "
            "consistency_token it never answers before that write is indexed (bounded wait; "
            "status 504 after FRESHRAG_CONSISTENCY_TIMEOUT_S). `index.watermark` says which "
            "writes the answer could see.",
            SearchBody.model_json_schema(),
            read_only,
        ),
        (
            fetch_document,
            "The current indexed text of one of your documents, with its version and "
            "updated_at: the last version the index applied (not a newer one still in Kafka), "
            "rebuilt from its chunks (whitespace normalized, headings as markdown lines).",
            FetchArgs.model_json_schema(),
            read_only,
        ),
        (
            upsert_document,
            "Create or replace a document (the REST POST /v1/documents): queued on Kafka, "
            "indexed by the flow. Returns consistency_token for search or wait_for.",
            _upsert_schema(),
            writes,
        ),
        (
            delete_document,
            "Delete a document (the REST DELETE /v1/documents/{id}). Returns "
            "consistency_token; once applied, the document is gone from search.",
            DeleteArgs.model_json_schema(),
            deletes,
        ),
        (
            wait_for,
            "Wait until the index has applied the write behind a consistency_token (bounded by "
            "timeout_s and the server's FRESHRAG_CONSISTENCY_TIMEOUT_S; status 504 when not).",
            WaitArgs.model_json_schema(),
            read_only,
        ),
    ]
    specs.append((*_freshness_tool(backend), read_only))
    tools = []
    for fn, description, schema, hints in specs:
        tool = Tool.from_function(fn, description=description, annotations=hints)
        tools.append(tool.model_copy(update={"parameters": schema}))
    return MCPServer(
        "freshrag",
        version=__version__,
        instructions=INSTRUCTIONS,
        tools=tools,
        lifespan=lifespan,
        warn_on_duplicate_tools=False,
    )


def _freshness_tool(backend: Backend) -> tuple[Callable[..., Any], str, dict[str, Any]]:
    """The `freshness` tool: the caller's GET /v1/freshness report."""

    async def freshness(ctx: Context[Any, Any]) -> CallToolResult:
        async def work() -> dict[str, Any]:
            args = FreshnessArgs.model_validate(_arguments(ctx))
            caller = await backend.caller(ctx)
            services = backend.services()
            out = await run_in_threadpool(freshness_report, services, caller, args.window_s)
            return out.model_dump(mode="json")

        return await _answer(work)

    return (
        freshness,
        "How fresh your tenant's index is (the REST GET /v1/freshness): per source partition "
        "the indexed watermark and consumer lag (records, seconds), the newest indexed "
        "event's age, produce-to-searchable latency percentiles.",
        FreshnessArgs.model_json_schema(),
    )


# --- serving -------------------------------------------------------------------------------


class McpEndpoint:
    """The ASGI endpoint at /mcp: the session manager of the running app (made in the app's
    lifespan, so an app can be started more than once). Unauthenticated requests get the REST
    401 before any MCP session exists."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.server = build_mcp_server(AppBackend(app))
        self.handler: Any = None

    @asynccontextmanager
    async def running(self) -> Any:
        from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
        from mcp.server.transport_security import TransportSecuritySettings

        # The API decides who may call (API keys) and where it listens; the SDK's DNS-rebinding
        # check (localhost Host headers only) would refuse any deployment behind a name.
        self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=self.app.state.mcp_max_body,
        )
        manager = self.server.session_manager
        async with manager.run():
            self.handler = StreamableHTTPASGIApp(manager)
            try:
                yield
            finally:
                self.handler = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.responses import JSONResponse

        services: Services | None = getattr(self.app.state, "services", None)
        if self.handler is None or services is None:
            body = {"error": {"type": "unavailable", "message": "the MCP server is starting"}}
            await JSONResponse(body, status_code=503)(scope, receive, send)
            return
        request = Request(scope)
        if request.method != "OPTIONS":
            s = services.settings
            try:
                resolve_caller(request.headers.get("authorization"), s.api_keys, s.auth_enabled)
            except Unauthorized as exc:
                body = {"error": {"type": "unauthorized", "message": exc.message}}
                headers = {"WWW-Authenticate": "Bearer"}
                await JSONResponse(body, status_code=401, headers=headers)(scope, receive, send)
                return
        await self.handler(scope, receive, send)


def mount(app: Any, max_body: int) -> McpEndpoint:
    """Add `/mcp` to the API app; run `endpoint.running()` inside the app's lifespan."""
    from starlette.routing import Route

    endpoint = McpEndpoint(app)
    app.state.mcp_max_body = max_body
    app.router.routes.append(Route(MCP_PATH, endpoint=endpoint, include_in_schema=False))
    return endpoint


def run_stdio(services: Services, caller: Caller) -> None:
    """Serve MCP on stdin/stdout until the client closes it (`freshrag mcp`)."""
    limits = Limits(services.settings, services.watermarks)
    server = build_mcp_server(FixedBackend(services, limits, caller))
    try:
        anyio.run(server.run_stdio_async)
    finally:
        limits.close()
