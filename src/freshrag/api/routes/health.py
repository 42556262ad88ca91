"""Liveness, readiness (each dependency reported) and Prometheus metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from freshrag.api.auth import Unauthorized, resolve_caller
from freshrag.api.deps import ServicesDep
from freshrag.api.services import Services

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:  # async: never waits for the threadpool
    return {"status": "ok"}


LLM_PROBE_TTL_S = 10.0  # the LLM is asked at most this often, however often probes come
# A tenant no key can have (a blank is outside the tenant pattern): counting it exercises the
# store (tenant index, filter, shard or server round trip) without counting the collection.
PROBE_TENANT = "readyz probe"


def _llm_check(request: Request, services: Services) -> bool:
    state = request.app.state
    cached: tuple[float, bool] | None = getattr(state, "readyz_llm", None)
    now = time.monotonic()
    if cached is not None and now - cached[0] < LLM_PROBE_TTL_S:
        return cached[1]
    ok = bool(services.llm.ready())
    state.readyz_llm = (now, ok)
    return ok


def _has_key(request: Request, services: Services) -> bool:
    s = services.settings
    try:
        caller = resolve_caller(request.headers.get("authorization"), s.api_keys, s.auth_enabled)
    except Unauthorized:
        return False
    return caller.authenticated


@router.get("/readyz")
def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """Ready when the store (and Kafka, and the in-process flow) answer: 200, else 503.

    The LLM is reported but never fails the probe: search works without it, so an LLM outage
    shows as `"status": "degraded"`. Upstream addresses and error texts are shown only to
    callers with a valid API key."""
    detailed = _has_key(request, services)
    checks: dict[str, Any] = {}
    try:
        services.current().store.count(PROBE_TENANT)
        checks["store"] = {"ok": True}
    except Exception as exc:
        checks["store"] = {"ok": False, **({"error": str(exc)[:200]} if detailed else {})}
    if services.producer is None:
        checks["kafka"] = {"ok": False, "error": "no producer in this process"}
    else:
        checks["kafka"] = {"ok": bool(services.producer.ready())}
        if detailed:
            checks["kafka"]["upstream"] = services.producer.bootstrap
    if services.flow_alive is not None:
        checks["ingest"] = {"ok": bool(services.flow_alive())}
    ready = all(c["ok"] for c in checks.values())
    llm_ok = _llm_check(request, services)
    checks["llm"] = {"ok": llm_ok, "status": "ok" if llm_ok else "degraded"}
    if detailed:
        checks["llm"]["upstream"] = services.llm.upstream
    status = ("ok" if llm_ok else "degraded") if ready else "unavailable"
    return JSONResponse(
        {"ready": ready, "status": status, "checks": checks}, status_code=200 if ready else 503
    )


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
