"""Index a BEIR corpus through the ingest path and score every judged query per search mode.

Documents already in the store with the same chunking fingerprint are not re-embedded, so reruns
only pay for the queries.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from freshrag.evaluation.dataset import BeirDataset, load_beir
from freshrag.evaluation.metrics import RECALL_K, evaluate_rankings
from freshrag.evaluation.report import EvalReport, IndexStats, ModeMetrics
from freshrag.ingest.events import RecordOrigin, Upsert
from freshrag.ingest.index_writer import apply_writes
from freshrag.ingest.indexing import (
    ChunkingConfig,
    DenseEmbedder,
    DocumentIndexer,
    SparseEmbedder,
    WriteUpsert,
)
from freshrag.retrieve.contract import SearchFilter, Store
from freshrag.retrieve.search import HybridSearcher, SearchMode, SearchRequest

EVAL_TENANT = "eval"
EVAL_MODES: tuple[SearchMode, ...] = ("dense", "bm25", "hybrid")
# A fixed timestamp keeps eval points identical across runs (freshness is off in eval anyway).
EVAL_UPDATED_AT = datetime(2020, 1, 1, tzinfo=UTC)
FINGERPRINT_KEY = "eval_index"

# (phase, done, total): phase is "index" or a search mode.
Progress = Callable[[str, int, int], None]


def chunking_fingerprint(chunking: ChunkingConfig, tag: str | None = None) -> str:
    """Identifies how points were built; a change re-indexes instead of reusing stale chunks."""
    base = f"chunk{chunking.max_tokens}/overlap{chunking.overlap}"
    return f"{base}/{tag}" if tag else base


def index_corpus(
    dataset: BeirDataset,
    store: Store,
    indexer: DocumentIndexer,
    *,
    tenant: str = EVAL_TENANT,
    fingerprint: str,
    batch_docs: int = 128,
    reindex: bool = False,
    progress: Progress | None = None,
) -> IndexStats:
    """Write the corpus as Upsert events of `tenant`, skipping documents already indexed.

    A document is reused when its points carry the same fingerprint; otherwise it is written at
    a higher version, so `apply_writes` removes the old chunks exactly as live ingest would.
    """
    started = time.perf_counter()
    store.ensure_collection()
    existing: dict[str, tuple[int, str]] = {}
    if store.count(tenant) > 0:
        for p in store.scroll_payloads(tenant):
            doc, version = str(p["doc_id"]), int(p["version"])
            tag = str((p.get("metadata") or {}).get(FINGERPRINT_KEY, ""))
            if doc not in existing or version > existing[doc][0]:
                existing[doc] = (version, tag)
    rows = list(dataset.iter_corpus())
    corpus_ids = {str(r["_id"]) for r in rows}
    removed = [doc for doc in existing if doc not in corpus_ids]
    for doc in removed:
        store.delete_document(tenant, doc)
    todo: list[Upsert] = []
    for n, row in enumerate(rows):
        doc_id = str(row["_id"])
        have = existing.get(doc_id)
        if have is not None and have[1] == fingerprint and not reindex:
            continue
        title = str(row.get("title") or "").strip()
        text = str(row.get("text") or "").strip() or title
        if not text:
            continue
        todo.append(
            Upsert(
                tenant=tenant,
                doc_id=doc_id,
                version=have[0] + 1 if have else 1,
                title=title,
                text=text,
                updated_at=EVAL_UPDATED_AT,
                origin=RecordOrigin(f"beir:{dataset.name}", 0, n, 0),
                source="beir",
                metadata={FINGERPRINT_KEY: fingerprint},
            )
        )
    embed_seconds = 0.0
    dead = 0
    indexed = 0
    embedded = 0
    if progress:
        progress("index", 0, len(todo))
    for start in range(0, len(todo), batch_docs):
        result = indexer.process(todo[start : start + batch_docs])
        apply_writes(store, result.writes)
        embed_seconds += result.embed_seconds
        embedded += result.chunks_embedded
        dead += len(result.dead_letters)
        indexed += sum(1 for w in result.writes if isinstance(w, WriteUpsert))
        if progress:
            progress("index", min(start + batch_docs, len(todo)), len(todo))
    flush = getattr(store, "flush", None)
    if callable(flush):
        flush()
    return IndexStats(
        documents=len(rows),
        indexed=indexed,
        reused=len(rows) - len(todo),
        removed=len(removed),
        chunks=store.count(tenant),
        chunks_embedded=embedded,
        seconds=time.perf_counter() - started,
        embed_seconds=embed_seconds,
        dead_letters=dead,
    )


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def search_rankings(
    searcher: HybridSearcher,
    queries: Mapping[str, str],
    mode: SearchMode,
    *,
    tenant: str = EVAL_TENANT,
    top_k: int = RECALL_K,
    progress: Progress | None = None,
) -> tuple[dict[str, list[str]], list[float]]:
    """Doc-level rankings (a doc scores as its best chunk) and per-query latency in ms."""
    rankings: dict[str, list[str]] = {}
    latencies: list[float] = []
    flt = SearchFilter(tenant=tenant)
    for i, (qid, text) in enumerate(queries.items(), 1):
        req = SearchRequest(query=text, filter=flt, top_k=top_k, mode=mode, dedupe=True)
        started = time.perf_counter()
        result = searcher.search(req)
        latencies.append((time.perf_counter() - started) * 1000)
        rankings[qid] = result.doc_ids
        if progress and (i % 25 == 0 or i == len(queries)):
            progress(mode, i, len(queries))
    return rankings, latencies


def run_eval(
    dataset_dir: Path,
    store: Store,
    searcher: HybridSearcher,
    embedder: DenseEmbedder,
    *,
    bm25: SparseEmbedder | None = None,
    chunking: ChunkingConfig | None = None,
    tenant: str = EVAL_TENANT,
    split: str | None = None,
    modes: Sequence[SearchMode] = EVAL_MODES,
    top_k: int = RECALL_K,
    max_queries: int | None = None,
    batch_docs: int = 128,
    reindex: bool = False,
    index_tag: str | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Index `dataset_dir` (unless already indexed) and score every judged query per mode.

    `bm25` is the document-side sparse encoder (default: the searcher's, so index and query
    agree); `index_tag` is added to the reuse fingerprint when something other than chunking
    (e.g. BM25 avg_len) changes how points are built.
    """
    dataset = load_beir(dataset_dir, split)
    chunking = chunking or ChunkingConfig()
    sparse: Any = bm25 if bm25 is not None else searcher.bm25
    indexer = DocumentIndexer(embedder, sparse, chunking)
    stats = index_corpus(
        dataset,
        store,
        indexer,
        tenant=tenant,
        fingerprint=chunking_fingerprint(chunking, index_tag),
        batch_docs=batch_docs,
        reindex=reindex,
        progress=progress,
    )
    qids = dataset.judged_queries()
    if max_queries is not None:
        qids = qids[:max_queries]
    queries = {q: dataset.queries[q] for q in qids}
    results: dict[str, ModeMetrics] = {}
    for mode in modes:
        rankings, latencies = search_rankings(
            searcher, queries, mode, tenant=tenant, top_k=top_k, progress=progress
        )
        ndcg, recall, mrr = evaluate_rankings(rankings, dataset.qrels)
        results[mode] = ModeMetrics(
            mode=mode,
            queries=len(rankings),
            ndcg_at_10=ndcg,
            recall_at_100=recall,
            mrr_at_10=mrr,
            p50_ms=_percentile(latencies, 50),
            p95_ms=_percentile(latencies, 95),
        )
    d = searcher.defaults
    params = {
        "top_k": top_k,
        "chunk_tokens": chunking.max_tokens,
        "chunk_overlap": chunking.overlap,
        "rrf_k": d.rrf_k,
        "weights": {"dense": d.weights[0], "bm25": d.weights[1]},
        "prefetch": d.prefetch(top_k),
        "index_tag": index_tag,
    }
    return EvalReport(
        dataset=dataset.name,
        split=dataset.split,
        tenant=tenant,
        queries=len(qids),
        index=stats,
        modes=results,
        params=params,
    )
