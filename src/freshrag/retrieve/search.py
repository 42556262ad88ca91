"""Hybrid search: dense + BM25 candidates from the store, fused and re-ranked (no web imports).

`HybridSearcher.search` (`candidates`, then `rank`) is what `/v1/search`, the CLI and the
evaluation call; chat calls `candidates` and `rank` itself, because it also needs the dense
candidates' cosine scores (the answerer's relevance threshold). Both paths rank alike, so what is
measured offline is what users get. The tenant always comes from the caller's identity (the
`SearchFilter` the caller builds), never from a request body.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from freshrag.retrieve.contract import Hit, SearchFilter, SparseVector, Store
from freshrag.retrieve.ranking import (
    DEFAULT_FRESHNESS_WEIGHT,
    DEFAULT_HALF_LIFE_HOURS,
    DEFAULT_RRF_K,
    DocumentGroup,
    apply_freshness,
    dedupe_by_document,
    group_by_document,
    parse_timestamp,
    rrf_fuse,
    sort_hits,
)

SearchMode = Literal["hybrid", "dense", "bm25"]
MODES: tuple[SearchMode, ...] = ("hybrid", "dense", "bm25")
MAX_TOP_K = 100
MAX_QUERY_CHARS = 4_000


class QueryEmbedder(Protocol):
    def embed_query(self, text: str) -> list[float]: ...


class SparseQueryEncoder(Protocol):
    def embed_query(self, text: str) -> SparseVector: ...


@dataclass(frozen=True, slots=True)
class SearchDefaults:
    """Ranking parameters used when a request leaves them unset (tuned on SciFact train).

    `weights` is (dense, bm25) for RRF. Each list fetches `max(top_k * prefetch_factor,
    min_prefetch)` candidates (capped at `max_prefetch`) so fusion and per-document dedupe have
    enough material below the cut-off.
    """

    rrf_k: float = DEFAULT_RRF_K
    weights: tuple[float, float] = (1.0, 1.0)
    prefetch_factor: int = 4
    min_prefetch: int = 50
    max_prefetch: int = 500
    half_life_hours: float = DEFAULT_HALF_LIFE_HOURS
    freshness_weight: float = DEFAULT_FRESHNESS_WEIGHT

    def prefetch(self, top_k: int) -> int:
        return min(self.max_prefetch, max(top_k * self.prefetch_factor, self.min_prefetch))


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One search. `top_k` counts documents when `dedupe`/`group` is on, else chunks.

    Unset ranking fields (None) take the searcher's `SearchDefaults`.
    """

    query: str
    filter: SearchFilter
    top_k: int = 10
    mode: SearchMode = "hybrid"
    fresh: bool = False
    half_life_hours: float | None = None
    dedupe: bool = False
    group: bool = False
    rrf_k: float | None = None
    weights: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise ValueError("top_k must be an integer")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.query.strip():
            raise ValueError("query must not be empty")
        if len(self.query) > MAX_QUERY_CHARS:
            raise ValueError(f"query is longer than {MAX_QUERY_CHARS} characters")
        if self.half_life_hours is not None and not (
            math.isfinite(self.half_life_hours) and self.half_life_hours > 0
        ):
            raise ValueError("half_life_hours must be > 0")
        if self.rrf_k is not None and not (math.isfinite(self.rrf_k) and self.rrf_k >= 0):
            raise ValueError("rrf_k must be >= 0")
        if self.weights is not None:
            if len(self.weights) != 2:
                raise ValueError("weights must be (dense, bm25)")
            if any(not math.isfinite(w) or w < 0 for w in self.weights) or not any(self.weights):
                raise ValueError("weights must be >= 0 and not all 0")


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result chunk with the fields a caller needs to show and cite it."""

    point_id: str
    score: float
    doc_id: str
    text: str
    title: str
    url: str | None
    version: int
    updated_at: datetime | None
    chunk_index: int
    chunk_count: int
    heading: str
    source: str | None
    metadata: Mapping[str, Any]
    # provenance: when the chunk was written, and the change event it came from
    indexed_at: datetime | None = None
    topic: str = ""
    partition: int = -1
    offset: int = -1

    @classmethod
    def from_hit(cls, hit: Hit) -> SearchHit:
        p = hit.payload
        return cls(
            point_id=hit.point_id,
            score=hit.score,
            doc_id=str(p.get("doc_id", "")),
            text=str(p.get("text", "")),
            title=str(p.get("title") or ""),
            url=p.get("url"),
            version=int(p.get("version", 0)),
            updated_at=parse_timestamp(p.get("updated_at")),
            chunk_index=int(p.get("chunk_index", 0)),
            chunk_count=int(p.get("chunk_count", 1)),
            heading=str(p.get("heading") or ""),
            source=p.get("source"),
            metadata=dict(p.get("metadata") or {}),
            indexed_at=parse_timestamp(p.get("indexed_at")),
            topic=str(p.get("topic") or ""),
            partition=_int(p.get("partition"), -1),
            offset=_int(p.get("offset"), -1),
        )


def _int(value: Any, default: int) -> int:
    """A payload integer (points written before provenance was stored lack it)."""
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True, slots=True)
class SearchGroup:
    doc_id: str
    score: float
    hits: list[SearchHit]


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Hits best first (one per document when deduped or grouped); `groups` only if asked."""

    hits: list[SearchHit]
    mode: SearchMode
    groups: list[SearchGroup] | None = None
    candidates: int = 0
    embed_ms: float = 0.0  # query embedding (≈0 on an LRU cache hit)
    search_ms: float = 0.0  # store queries + fusion + re-ranking

    @property
    def total_ms(self) -> float:
        return self.embed_ms + self.search_ms

    @property
    def doc_ids(self) -> list[str]:
        return [h.doc_id for h in self.hits]


class HybridSearcher:
    """Runs a `SearchRequest` against a `Store`: embed, fetch candidates, fuse, re-rank, cut."""

    def __init__(
        self,
        store: Store,
        embedder: QueryEmbedder,
        bm25: SparseQueryEncoder,
        defaults: SearchDefaults | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.bm25 = bm25
        self.defaults = defaults or SearchDefaults()
        self.clock = clock

    def candidates(self, req: SearchRequest) -> tuple[list[Hit], list[Hit], float]:
        """The raw dense and BM25 candidate lists (empty for a mode that skips one) and the
        query-embedding time in ms; exposed for evaluation and parameter tuning."""
        limit = self.defaults.prefetch(req.top_k)
        dense: list[Hit] = []
        sparse: list[Hit] = []
        embed_ms = 0.0
        if req.mode in ("hybrid", "dense"):
            started = time.perf_counter()
            vector = self.embedder.embed_query(req.query)
            embed_ms = (time.perf_counter() - started) * 1000
            dense = self.store.query_dense(vector, req.filter, limit)
        if req.mode in ("hybrid", "bm25"):
            sparse = self.store.query_sparse(self.bm25.embed_query(req.query), req.filter, limit)
        return dense, sparse, embed_ms

    def rank(self, req: SearchRequest, dense: Sequence[Hit], sparse: Sequence[Hit]) -> list[Hit]:
        """Fuse (hybrid) or take one list as is, then the optional freshness boost (pure)."""
        if req.mode == "hybrid":
            weights = req.weights or self.defaults.weights
            k = self.defaults.rrf_k if req.rrf_k is None else req.rrf_k
            ranked = rrf_fuse([dense, sparse], weights, k)
        else:
            ranked = sort_hits(dense if req.mode == "dense" else sparse)
        if req.fresh:
            half_life = req.half_life_hours or self.defaults.half_life_hours
            ranked = apply_freshness(
                ranked, self.clock(), half_life, self.defaults.freshness_weight
            )
        return ranked

    def search(self, req: SearchRequest) -> SearchResult:
        started = time.perf_counter()
        dense, sparse, embed_ms = self.candidates(req)
        ranked = self.rank(req, dense, sparse)
        groups: list[DocumentGroup] | None = None
        if req.group:
            groups = group_by_document(ranked)[: req.top_k]
            top = [g.hits[0] for g in groups]
        elif req.dedupe:
            top = dedupe_by_document(ranked)[: req.top_k]
        else:
            top = ranked[: req.top_k]
        total_ms = (time.perf_counter() - started) * 1000
        return SearchResult(
            hits=[SearchHit.from_hit(h) for h in top],
            mode=req.mode,
            groups=None
            if groups is None
            else [
                SearchGroup(g.doc_id, g.score, [SearchHit.from_hit(h) for h in g.hits])
                for g in groups
            ],
            candidates=len({h.point_id for h in (*dense, *sparse)}),
            embed_ms=embed_ms,
            search_ms=total_ms - embed_ms,
        )

    def with_defaults(self, **changes: Any) -> HybridSearcher:
        """A searcher on the same store and models with some defaults changed (tuning)."""
        return HybridSearcher(
            self.store, self.embedder, self.bm25, replace(self.defaults, **changes), self.clock
        )
