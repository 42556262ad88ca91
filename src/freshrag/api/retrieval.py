"""Shared by the search and chat routes: tenant-scoped filters, retrieval, freshness info."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from freshrag.api.auth import Caller
from freshrag.api.schemas import Filters, HitOut, IndexInfo, source_position
from freshrag.api.services import Services
from freshrag.generate.sources import Source
from freshrag.retrieve.contract import Hit, SearchFilter, Store
from freshrag.retrieve.search import SearchHit, SearchRequest


def search_filter(caller: Caller, filters: Filters) -> SearchFilter:
    """The tenant and the principals come from the caller's key (and trusted header), never
    from the request body; the store applies both inside its query."""
    return SearchFilter(
        tenant=caller.tenant,
        principals=caller.principals,
        metadata_equals=dict(filters.metadata),
        metadata_any={k: list(v) for k, v in filters.metadata_any.items()},
        updated_after=filters.updated_after,
        updated_before=filters.updated_before,
        doc_ids=list(filters.doc_ids) if filters.doc_ids is not None else None,
    )


def hit_out(hit: SearchHit) -> HitOut:
    return HitOut(
        doc_id=hit.doc_id,
        chunk_index=hit.chunk_index,
        score=hit.score,
        text=hit.text,
        title=hit.title,
        url=hit.url,
        version=hit.version,
        updated_at=hit.updated_at,
        heading=hit.heading,
        metadata=dict(hit.metadata),
        indexed_at=hit.indexed_at,
        source_position=source_position(hit.topic, hit.partition, hit.offset),
    )


def read_watermark(services: Services) -> dict[str, int]:
    """The indexed watermarks now: read it BEFORE a query, so every record below it is one
    the query could see (the flow only moves it forward after a write is searchable)."""
    watermarks = getattr(services, "watermarks", None)  # absent on stand-ins for Services
    return watermarks() if watermarks is not None else {}


def index_info(
    services: Services,
    updated: list[datetime | None],
    generation: str | None = None,
    *,
    watermark: dict[str, int] | None = None,
    retrieved_at: datetime | None = None,
) -> IndexInfo:
    """`watermark`: the one read when retrieval ran (read now when not given)."""
    known = [u for u in updated if u is not None]
    age = None
    if known:
        newest = max(u if u.tzinfo else u.replace(tzinfo=UTC) for u in known)
        age = max(0.0, (datetime.now(UTC) - newest).total_seconds())
    if watermark is None:
        watermark = read_watermark(services)
    return IndexInfo(
        watermark=watermark,
        freshest_document_age_s=age,
        generation=generation or None,
        retrieved_at=retrieved_at,
    )


MAX_RESCORE_POINTS = 500


def dense_scores(
    ranked: Sequence[Hit],
    dense: Sequence[Hit],
    flt: SearchFilter,
    query_vector: Callable[[], Sequence[float]],
    store: Store,
) -> dict[str, float]:
    """The dense cosine of every ranked hit, for the answerer's relevance threshold.

    Hits from the dense candidates carry it. A hit that only BM25 found (outside the dense
    prefetch) is scored by one dense query restricted to its documents, instead of counting
    as 0 and being dropped by the threshold however well it matches the question's words.
    """
    cosine = {h.point_id: h.score for h in dense}
    missing = [h for h in ranked if h.point_id not in cosine]
    if not missing:
        return cosine
    chunks: dict[str, int] = {}
    for h in missing:
        chunks[h.doc_id] = max(1, int(h.payload.get("chunk_count") or 1))
    limit = min(MAX_RESCORE_POINTS, sum(chunks.values()))
    restricted = replace(flt, doc_ids=sorted(chunks))
    for h in store.query_dense(query_vector(), restricted, limit):
        cosine.setdefault(h.point_id, h.score)
    return cosine


@dataclass
class Retrieved:
    sources: list[Source]
    hits: list[SearchHit]
    seconds: float
    generation: str = ""
    # the index watermark read just before the query, and when: what the answer could see
    watermark: dict[str, int] = field(default_factory=dict)
    retrieved_at: datetime | None = None

    def index(self, services: Services) -> IndexInfo:
        """The answer's `index`: the watermark of retrieval time, not of the response."""
        return index_info(
            services,
            [h.updated_at for h in self.hits],
            self.generation,
            watermark=self.watermark,
            retrieved_at=self.retrieved_at,
        )


def retrieve_sources(
    services: Services, caller: Caller, question: str, filters: Filters, top_k: int, fresh: bool
) -> Retrieved:
    """Hybrid-ranked chunks for a chat answer; each source's score is its dense cosine so the
    answerer's relevance threshold has a meaningful scale (RRF scores are rank-based)."""
    started = time.perf_counter()
    generation = services.current()
    searcher = generation.searcher
    watermark = read_watermark(services)
    retrieved_at = datetime.now(UTC)
    req = SearchRequest(
        query=question, filter=search_filter(caller, filters), top_k=top_k, fresh=fresh
    )
    dense, sparse, _ = searcher.candidates(req)
    ranked = searcher.rank(req, dense, sparse)[:top_k]
    cosine = dense_scores(
        ranked, dense, req.filter, lambda: searcher.embedder.embed_query(question), searcher.store
    )
    sources = [Source.from_payload(h.payload, score=cosine.get(h.point_id, 0.0)) for h in ranked]
    hits = [SearchHit.from_hit(h) for h in ranked]
    elapsed = time.perf_counter() - started
    services.metrics.retrieval.observe(elapsed)
    return Retrieved(sources, hits, elapsed, generation.name, watermark, retrieved_at)
