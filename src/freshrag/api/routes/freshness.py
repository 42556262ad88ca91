"""GET /v1/freshness: how fresh the index is for the caller (see `freshrag.api.freshness`)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from freshrag.api.deps import CallerDep, ServicesDep
from freshrag.api.freshness import FreshnessOut, freshness_report

router = APIRouter(prefix="/v1", tags=["freshness"])


@router.get("/freshness", response_model=FreshnessOut)
async def freshness(caller: CallerDep, services: ServicesDep) -> FreshnessOut:
    """Per source partition: indexed watermark, consumer lag (records, seconds); for the
    caller's tenant: the newest write's age and produce → searchable latency percentiles.
    Lag figures are null with `lag_error` when Kafka does not answer (bounded wait)."""
    return await run_in_threadpool(freshness_report, services, caller)
