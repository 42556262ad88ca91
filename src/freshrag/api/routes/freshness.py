"""GET /v1/freshness: how fresh the index is for the caller (see `freshrag.api.freshness`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from freshrag.api.deps import CallerDep, ServicesDep
from freshrag.api.freshness import FreshnessOut, freshness_report
from freshrag.ingest.searchable import WINDOW_S

router = APIRouter(prefix="/v1", tags=["freshness"])


@router.get("/freshness", response_model=FreshnessOut)
async def freshness(
    caller: CallerDep,
    services: ServicesDep,
    window_s: Annotated[
        float | None,
        Query(
            gt=0,
            le=WINDOW_S,
            description=f"latency percentiles over the last window_s seconds (default and "
            f"most: {int(WINDOW_S)}; a window published by a separate ingest process is "
            "always the full one)",
        ),
    ] = None,
) -> FreshnessOut:
    """Per source partition: indexed watermark, consumer lag (records, seconds); for the
    caller's tenant: the newest write's age and produce → searchable latency percentiles.
    Lag figures are null with `lag_error` when Kafka does not answer (bounded wait)."""
    return await run_in_threadpool(freshness_report, services, caller, window_s)
