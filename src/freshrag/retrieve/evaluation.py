"""Retrieval quality on a BEIR dataset (nDCG@10, recall@100, MRR@10) for each search mode.

The corpus is indexed through the same chunk -> embed -> store path as ingest
(`DocumentIndexer.process` + `apply_writes`), and every query goes through
`HybridSearcher.search`, so the figures describe what the platform serves, not a side pipeline.
Documents already in the store with the same chunking fingerprint are not re-embedded, so reruns
only pay for the queries.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from rich.table import Table

EVAL_TENANT = "eval"
EVAL_MODES: tuple[SearchMode, ...] = ("dense", "bm25", "hybrid")
NDCG_K = 10
RECALL_K = 100
MRR_K = 10
# A fixed timestamp keeps eval points identical across runs (freshness is off in eval anyway).
EVAL_UPDATED_AT = datetime(2020, 1, 1, tzinfo=UTC)
FINGERPRINT_KEY = "eval_index"

# (phase, done, total): phase is "index" or a search mode.
Progress = Callable[[str, int, int], None]


class EvalError(ValueError):
    """The dataset folder is not a readable BEIR dataset; the message says what is missing."""


# -- dataset ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BeirDataset:
    name: str
    corpus_path: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: graded relevance}
    split: str

    def iter_corpus(self) -> Iterator[dict[str, Any]]:
        with self.corpus_path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalError(f"{self.corpus_path}:{n}: not JSON: {exc.msg}") from None
                if not isinstance(row, dict) or "_id" not in row:
                    raise EvalError(f"{self.corpus_path}:{n}: expected an object with '_id'")
                yield row

    def judged_queries(self) -> list[str]:
        """Query ids with text and at least one relevant document, in a stable order."""
        ids = [
            qid
            for qid, rels in self.qrels.items()
            if qid in self.queries and any(r > 0 for r in rels.values())
        ]
        return sorted(ids, key=lambda q: (len(q), q))


def _pick_split(qrels_dir: Path, split: str | None) -> Path:
    if split is not None:
        path = qrels_dir / f"{split}.tsv"
        if not path.exists():
            have = ", ".join(sorted(p.stem for p in qrels_dir.glob("*.tsv"))) or "none"
            raise EvalError(f"no qrels split {split!r} in {qrels_dir} (have: {have})")
        return path
    for name in ("test", "dev", "train"):
        if (qrels_dir / f"{name}.tsv").exists():
            return qrels_dir / f"{name}.tsv"
    files = sorted(qrels_dir.glob("*.tsv"))
    if not files:
        raise EvalError(f"no qrels/*.tsv in {qrels_dir.parent}")
    return files[0]


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (`query-id corpus-id score`, header optional) -> graded relevance."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise EvalError(f"{path}:{n}: expected query-id, corpus-id, score")
            try:
                score = int(float(row[2]))
            except ValueError:
                if n == 1:  # the header
                    continue
                raise EvalError(f"{path}:{n}: score {row[2]!r} is not a number") from None
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = score
    return qrels


def load_beir(dataset_dir: Path, split: str | None = None) -> BeirDataset:
    """Read a BEIR folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv.

    Without `split`, test is preferred, then dev, then train (SciFact here ships only train).
    """
    dataset_dir = Path(dataset_dir)
    corpus = dataset_dir / "corpus.jsonl"
    queries_path = dataset_dir / "queries.jsonl"
    for needed in (corpus, queries_path, dataset_dir / "qrels"):
        if not needed.exists():
            raise EvalError(f"{dataset_dir} is not a BEIR dataset: {needed.name} is missing")
    qrels_path = _pick_split(dataset_dir / "qrels", split)
    queries: dict[str, str] = {}
    with queries_path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                queries[str(row["_id"])] = str(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EvalError(f"{queries_path}:{n}: expected {{'_id', 'text'}}") from None
    return BeirDataset(
        name=dataset_dir.name,
        corpus_path=corpus,
        queries=queries,
        qrels=load_qrels(qrels_path),
        split=qrels_path.stem,
    )


# -- metrics ---------------------------------------------------------------------------------


def ndcg_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = NDCG_K) -> float:
    """nDCG@k with linear gain `rel / log2(rank + 1)` (trec_eval's and BEIR's definition)."""
    dcg = sum(rels.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = RECALL_K) -> float:
    """Share of the relevant documents (relevance > 0) found in the top k."""
    relevant = {doc for doc, r in rels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], rels: Mapping[str, int], k: int = MRR_K) -> float:
    """1 / rank of the first relevant document in the top k (0 when none is)."""
    for i, doc in enumerate(ranked[:k]):
        if rels.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


# -- indexing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexStats:
    documents: int
    indexed: int  # embedded and written in this run
    reused: int  # already in the store with the same fingerprint
    removed: int  # in the store but no longer in the corpus
    chunks: int  # points of the tenant after indexing
    chunks_embedded: int  # chunks embedded in this run
    seconds: float
    embed_seconds: float
    dead_letters: int = 0

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_embedded / self.embed_seconds if self.embed_seconds else 0.0


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


# -- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModeMetrics:
    mode: str
    queries: int
    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True, slots=True)
class EvalReport:
    dataset: str
    split: str
    tenant: str
    queries: int
    index: IndexStats
    modes: dict[str, ModeMetrics]
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        index = asdict(self.index)
        index["chunks_per_second"] = round(self.index.chunks_per_second, 2)
        return {
            "dataset": self.dataset,
            "split": self.split,
            "tenant": self.tenant,
            "queries": self.queries,
            "index": index,
            "modes": {name: asdict(m) for name, m in self.modes.items()},
            "params": self.params,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def to_table(self) -> Table:
        """Metrics per mode as a rich table (best value per column in bold)."""
        from rich.table import Table

        table = Table(
            title=f"{self.dataset} ({self.split}, {self.queries} queries, "
            f"{self.index.documents} docs, {self.index.chunks} chunks)"
        )
        table.add_column("mode")
        for col in ("nDCG@10", "recall@100", "MRR@10", "p50 ms", "p95 ms"):
            table.add_column(col, justify="right")
        best = {
            attr: max((getattr(m, attr) for m in self.modes.values()), default=0.0)
            for attr in ("ndcg_at_10", "recall_at_100", "mrr_at_10")
        }

        def cell(m: ModeMetrics, attr: str) -> str:
            value = getattr(m, attr)
            text = f"{value:.4f}"
            return f"[bold]{text}[/bold]" if len(self.modes) > 1 and value == best[attr] else text

        for m in self.modes.values():
            table.add_row(
                m.mode,
                cell(m, "ndcg_at_10"),
                cell(m, "recall_at_100"),
                cell(m, "mrr_at_10"),
                f"{m.p50_ms:.1f}",
                f"{m.p95_ms:.1f}",
            )
        return table


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]
) -> tuple[float, float, float]:
    """Mean (nDCG@10, recall@100, MRR@10) of ranked doc ids per query, over `rankings`' keys."""
    if not rankings:
        return 0.0, 0.0, 0.0
    n = len(rankings)
    ndcg = sum(ndcg_at_k(r, qrels[q]) for q, r in rankings.items()) / n
    recall = sum(recall_at_k(r, qrels[q]) for q, r in rankings.items()) / n
    mrr = sum(mrr_at_k(r, qrels[q]) for q, r in rankings.items()) / n
    return ndcg, recall, mrr


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
