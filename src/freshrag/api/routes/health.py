"""Liveness, readiness (each dependency reported) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from freshrag.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: ServicesDep) -> JSONResponse:
    checks: dict[str, Any] = {}
    try:
        services.store.count(None)
        checks["store"] = {"ok": True}
    except Exception as exc:
        checks["store"] = {"ok": False, "error": str(exc)[:200]}
    if services.producer is None:
        checks["kafka"] = {"ok": False, "error": "no producer in this process"}
    else:
        checks["kafka"] = {
            "ok": bool(services.producer.ready()),
            "upstream": services.producer.bootstrap,
        }
    if services.flow_alive is not None:
        checks["ingest"] = {"ok": bool(services.flow_alive())}
    checks["llm"] = {"ok": bool(services.llm.ready()), "upstream": services.llm.upstream}
    ready = all(c["ok"] for c in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
