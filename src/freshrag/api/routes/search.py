"""POST /v1/search: hybrid search scoped to the caller's tenant."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from freshrag.api.auth import Caller
from freshrag.api.consistency import wait_for_token
from freshrag.api.deps import CallerDep, ServicesDep
from freshrag.api.errors import invalid_input
from freshrag.api.limits import LimitsDep
from freshrag.api.retrieval import hit_out, index_info, read_watermark, search_filter
from freshrag.api.schemas import SearchBody, SearchOut
from freshrag.api.services import Services
from freshrag.retrieve.search import SearchRequest

router = APIRouter(prefix="/v1", tags=["search"])


@router.post("/search", response_model=SearchOut)
async def search(
    body: SearchBody, caller: CallerDep, services: ServicesDep, limits: LimitsDep
) -> SearchOut:
    if len(body.query) > services.settings.max_query_chars:
        raise invalid_input("query", "query is too long")
    await wait_for_token(services, limits, body.consistency_token)  # holds no thread
    return await run_in_threadpool(run_search, body, caller, services)


def run_search(body: SearchBody, caller: Caller, services: Services) -> SearchOut:
    """The search itself: short blocking work (embedding, store), run in the threadpool."""
    started = time.perf_counter()
    req = SearchRequest(
        query=body.query,
        filter=search_filter(caller, body.filters),
        top_k=body.top_k,
        mode=body.mode,
        fresh=body.fresh,
        half_life_hours=body.half_life_hours,
        dedupe=body.dedupe,
        group=body.group,
    )
    generation = services.current()
    watermark = read_watermark(services)  # before the query: every record below it was seen
    retrieved_at = datetime.now(UTC)
    result = generation.searcher.search(req)
    elapsed = time.perf_counter() - started
    services.metrics.retrieval.observe(elapsed)
    return SearchOut(
        hits=[hit_out(h) for h in result.hits],
        mode=result.mode,
        took_ms=round(elapsed * 1000, 2),
        index=index_info(
            services,
            [h.updated_at for h in result.hits],
            generation.name,
            watermark=watermark,
            retrieved_at=retrieved_at,
        ),
    )
