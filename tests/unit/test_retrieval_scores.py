"""Chat sources found only by BM25 get their real dense cosine (issue 10), so the answerer's
threshold does not drop them as 0. Fakes stand in for the store and the embedder (pure logic;
the real ones run in tests/integration/test_api.py)."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from freshrag.api.auth import Caller
from freshrag.api.retrieval import retrieve_sources
from freshrag.api.schemas import Filters
from freshrag.api.services import ApiMetrics
from freshrag.generate.answer import Answerer
from freshrag.retrieve.contract import Hit, SearchFilter, SparseVector
from freshrag.retrieve.search import HybridSearcher, SearchDefaults


def hit(doc_id: str, score: float, chunk: int = 0) -> Hit:
    payload = {
        "doc_id": doc_id,
        "tenant": "t",
        "chunk_index": chunk,
        "chunk_count": 2,
        "text": f"{doc_id} text",
        "title": doc_id,
        "version": 1,
    }
    return Hit(f"{doc_id}#{chunk}", score, payload)


class FakeStore:
    """Dense prefetch sees only `dense`; a dense query restricted to doc ids scores them all."""

    def __init__(self, dense: list[Hit], sparse: list[Hit], cosine: dict[str, float]) -> None:
        self.dense, self.sparse, self.cosine = dense, sparse, cosine
        self.restricted: list[tuple[list[str], int]] = []

    def query_dense(self, vector: Sequence[float], flt: SearchFilter, limit: int) -> list[Hit]:
        if flt.doc_ids is None:
            return self.dense[:limit]
        self.restricted.append((list(flt.doc_ids), limit))
        assert flt.tenant == "t"  # the restricted query keeps the caller's tenant
        scored = [hit(d, self.cosine[f"{d}#{c}"], c) for d in flt.doc_ids for c in (0, 1)]
        return sorted(scored, key=lambda h: -h.score)[:limit]

    def query_sparse(self, vector: SparseVector, flt: SearchFilter, limit: int) -> list[Hit]:
        return self.sparse[:limit]


class Embed:
    def embed_query(self, text: str) -> Any:
        return [0.0] * 4


class Sparse:
    def embed_query(self, text: str) -> SparseVector:
        return SparseVector([1], [1.0])


def services(store: FakeStore) -> Any:
    searcher = HybridSearcher(store, Embed(), Sparse(), SearchDefaults(min_prefetch=2))  # type: ignore[arg-type]
    generation = SimpleNamespace(name="t", store=store, searcher=searcher)
    return SimpleNamespace(searcher=searcher, metrics=ApiMetrics(), current=lambda: generation)


def test_bm25_only_hit_gets_its_cosine_and_passes_the_threshold() -> None:
    store = FakeStore(
        dense=[hit("a", 0.31), hit("b", 0.20)],
        sparse=[hit("exact", 9.0), hit("a", 3.0)],  # "exact": the question's rare words
        cosine={"exact#0": 0.62, "exact#1": 0.10},
    )
    got = retrieve_sources(services(store), Caller("t", True), "q", Filters(), 3, fresh=False)
    scores = {f"{s.doc_id}#{s.chunk_index}": s.score for s in got.sources}
    assert scores["exact#0"] == 0.62  # before the fix: 0.0, below any threshold
    assert store.restricted == [(["exact"], 2)]
    kept = Answerer(llm=None, min_score=0.25).relevant(got.sources)  # type: ignore[arg-type]
    assert {s.doc_id for s in kept} == {"exact", "a"}


def test_no_extra_query_when_every_ranked_hit_has_a_cosine() -> None:
    store = FakeStore(dense=[hit("a", 0.5), hit("b", 0.4)], sparse=[hit("a", 2.0)], cosine={})
    got = retrieve_sources(services(store), Caller("t", True), "q", Filters(), 2, fresh=False)
    assert [s.score for s in got.sources] == [0.5, 0.4]
    assert store.restricted == []
