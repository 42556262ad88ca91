"""Hybrid search latency on Qdrant Edge at 10k and 100k chunks.

Run: `python -m benchmarks.search_latency [--sizes 10000 100000] [--json out.json]`.

Builds EdgeStore indexes from synthetic chunks (random unit vectors, BM25 vectors of synthetic
Zipf-distributed text), upserted in batches of 1,000 through `EdgeStore.upsert_chunks`, then
times `HybridSearcher.search` (dense + BM25 + RRF fusion + dedupe), the exact function the API
calls. Query vectors are precomputed, so the main figures exclude the query embedding; the real
embedder is timed separately, and end to end, at the largest size.

Two layouts per size: points spread over 10 tenants (a search filters to one tenant, ~10% of
the points) and all points in one tenant (the filter matches everything, i.e. no selectivity;
the store contract always filters by tenant). Target: p99 < 50 ms at 100k.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from freshrag.core.sparse import Bm25Encoder
from freshrag.retrieve.contract import DENSE_DIM, ChunkPoint, SearchFilter, Store
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.search import HybridSearcher, SearchMode, SearchRequest

BATCH = 1_000
VOCAB = 20_000
WORDS_PER_CHUNK = 80
NOW = datetime(2025, 6, 1, tzinfo=UTC)
MODES_TIMED: tuple[SearchMode, ...] = ("hybrid", "dense", "bm25")


@dataclass
class Row:
    size: int
    tenants: int
    mode: str
    what: str
    queries: int
    p50_ms: float
    p99_ms: float
    mean_ms: float


@dataclass
class BuildStats:
    size: int
    tenants: int
    upsert_s: float
    upserts_per_s: float
    optimize_s: float | None


class Corpus:
    """Deterministic synthetic chunks: regenerate any chunk's vector and text from its index."""

    def __init__(self, size: int, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        self.vocab = [
            "".join(rng.choice(letters, size=int(n))) for n in rng.integers(4, 10, size=VOCAB)
        ]
        ranks = np.arange(1, VOCAB + 1, dtype=np.float64)
        self.word_p = (1.0 / ranks**1.07) / np.sum(1.0 / ranks**1.07)
        self.size = size
        vectors = rng.standard_normal((size, DENSE_DIM), dtype=np.float32)
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.seed = seed

    def text(self, i: int, words: int = WORDS_PER_CHUNK) -> str:
        rng = np.random.default_rng((self.seed, i))
        picks = rng.choice(VOCAB, size=words, p=self.word_p)
        return " ".join(self.vocab[j] for j in picks)


class PrecomputedEmbedder:
    """Returns ready query vectors, so a search timing excludes the model."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def embed_query(self, text: str) -> list[float]:
        return self.vectors[text]


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def build(
    root: Path, corpus: Corpus, tenants: int, bm25: Bm25Encoder, log: Callable[[str], None]
) -> tuple[EdgeStore, BuildStats]:
    store = EdgeStore(root, collection=f"bench_{corpus.size}_{tenants}t")
    store.ensure_collection()
    upsert_s = fill(store, corpus, tenants, bm25)
    log(
        f"built {corpus.size} chunks / {tenants} tenants: upsert {upsert_s:.1f}s "
        f"({corpus.size / upsert_s:,.0f}/s)"
    )
    return store, BuildStats(corpus.size, tenants, upsert_s, corpus.size / upsert_s, None)


def fill(store: Store, corpus: Corpus, tenants: int, bm25: Bm25Encoder) -> float:
    """Upsert the corpus's chunks into any contract store (Edge or server); the seconds spent
    in `upsert_chunks`."""
    upsert_s = 0.0
    for start in range(0, corpus.size, BATCH):
        idx = range(start, min(start + BATCH, corpus.size))
        texts = [corpus.text(i) for i in idx]
        sparse = bm25.embed_documents(texts)
        points = [
            ChunkPoint(
                tenant=f"t{i % tenants}",
                doc_id=f"doc-{i // 2}",  # two chunks per document
                version=1,
                chunk_index=i % 2,
                chunk_count=2,
                text=text,
                title=f"synthetic {i // 2}",
                url=None,
                source="bench",
                updated_at=NOW - timedelta(hours=i % 5000),
                indexed_at=NOW,
                metadata={"bucket": i % 7},
                dense=corpus.vectors[i].tolist(),
                sparse=sv,
            )
            for i, text, sv in zip(idx, texts, sparse, strict=True)
        ]
        started = time.perf_counter()
        store.upsert_chunks(points)
        upsert_s += time.perf_counter() - started
    return upsert_s


def optimize(store: EdgeStore) -> float | None:
    """Build HNSW / merge segments once, as a long-running process eventually would.

    EdgeStore has no public optimize hook yet, so this reaches the shard (benchmark only).
    """
    hook = getattr(store, "optimize", None)
    shard = store._s()
    run = hook if callable(hook) else getattr(shard, "optimize", None)
    if run is None:
        return None
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def queries_for(corpus: Corpus, n: int, seed: int = 11) -> list[tuple[str, list[float], int]]:
    """(text, vector, source chunk): a vector near a stored chunk and 4 of that chunk's words."""
    rng = np.random.default_rng(seed)
    out = []
    for q in range(n):
        i = int(rng.integers(0, corpus.size))
        noisy = corpus.vectors[i] + rng.standard_normal(DENSE_DIM).astype(np.float32) * 0.05
        words = corpus.text(i).split()
        pick = rng.choice(len(words), size=4, replace=False)
        text = f"q{q} " + " ".join(words[j] for j in sorted(pick))
        out.append((text, (noisy / np.linalg.norm(noisy)).tolist(), i))
    return out


def time_searches(
    searcher: HybridSearcher,
    queries: Sequence[tuple[str, list[float], int]],
    tenants: int,
    mode: SearchMode,
    warmup: int = 20,
) -> list[float]:
    timings = []
    for n, (text, _, i) in enumerate(queries):
        req = SearchRequest(text, SearchFilter(f"t{i % tenants}"), top_k=10, mode=mode, dedupe=True)
        started = time.perf_counter()
        result = searcher.search(req)
        elapsed = (time.perf_counter() - started) * 1000
        if n >= warmup:
            timings.append(elapsed)
        if not result.hits:
            raise RuntimeError(f"no hits for {text!r}: the index is not what it should be")
    return timings


def row(size: int, tenants: int, mode: str, what: str, ms: Sequence[float]) -> Row:
    return Row(
        size,
        tenants,
        mode,
        what,
        len(ms),
        percentile(ms, 50),
        percentile(ms, 99),
        statistics.fmean(ms),
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--tenants", type=int, default=10)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--path", type=Path, default=None, help="index folder (default: a temp dir)")
    ap.add_argument("--no-embed", action="store_true", help="skip the real-embedder timings")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    console = Console(width=max(Console().width, 120))

    def log(msg: str) -> None:
        console.log(msg)

    bm25 = Bm25Encoder()
    rows: list[Row] = []
    builds: list[BuildStats] = []
    embed_row: Row | None = None
    with tempfile.TemporaryDirectory(prefix="freshrag-bench-", dir=args.path) as tmp:
        for size in args.sizes:
            corpus = Corpus(size)
            queries = queries_for(corpus, args.queries)
            vectors = {text: vec for text, vec, _ in queries}
            for tenants in (args.tenants, 1):
                store, stats = build(Path(tmp), corpus, tenants, bm25, log)
                searcher = HybridSearcher(store, PrecomputedEmbedder(vectors), bm25)
                # As ingest leaves the shard (EdgeStore never optimizes), then optimized.
                ms = time_searches(searcher, queries, tenants, "hybrid")
                rows.append(row(size, tenants, "hybrid", "unoptimized shard", ms))
                log(f"{size} / {tenants}t hybrid unoptimized: p99 {rows[-1].p99_ms:.2f} ms")
                stats.optimize_s = optimize(store)
                builds.append(stats)
                log(f"optimize: {stats.optimize_s} s")
                time_searches(searcher, queries, tenants, "hybrid")  # warm the new segments
                for mode in MODES_TIMED:
                    ms = time_searches(searcher, queries, tenants, mode)
                    rows.append(row(size, tenants, mode, "optimized shard", ms))
                    log(f"{size} / {tenants}t {mode}: p99 {rows[-1].p99_ms:.2f} ms")
                if not args.no_embed and size == max(args.sizes) and tenants == args.tenants:
                    embed_row = time_with_embedder(store, bm25, queries, tenants, rows, size)
                store.close()
    print_results(console, rows, builds, embed_row)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "builds": [asdict(b) for b in builds],
                    "rows": [asdict(r) for r in rows],
                    "embed_query": asdict(embed_row) if embed_row else None,
                },
                indent=2,
            )
        )


def time_with_embedder(
    store: EdgeStore,
    bm25: Bm25Encoder,
    queries: Sequence[tuple[str, list[float], int]],
    tenants: int,
    rows: list[Row],
    size: int,
) -> Row:
    """The real model: embed time alone, and search including embedding (cache misses)."""
    from freshrag.core.embedder import Embedder

    embedder = Embedder(query_cache_size=0)
    embedder.embed_query("warm up the model")
    texts = [
        f"how does {text.split(' ', 1)[1]} relate to result {n}"
        for n, (text, _, _) in enumerate(queries)
    ]
    embed_ms = []
    for text in texts[:200]:
        started = time.perf_counter()
        embedder.embed_query(text)
        embed_ms.append((time.perf_counter() - started) * 1000)
    searcher = HybridSearcher(store, embedder, bm25)
    real = [(t, v, i) for t, (_, v, i) in zip(texts, queries, strict=True)][:200]
    ms = time_searches(searcher, real, tenants, "hybrid", warmup=0)
    rows.append(row(size, tenants, "hybrid", "optimized + embed_query", ms))
    return row(size, tenants, "-", "embed_query only", embed_ms)


def print_results(
    console: Console, rows: list[Row], builds: list[BuildStats], embed_row: Row | None
) -> None:
    table = Table(title="Search latency, Qdrant Edge (top_k 10, dedupe, 50 candidates/list)")
    for col in ("chunks", "tenants", "filter keeps", "what", "mode", "n", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col in ("what", "mode") else "right")
    table.add_column("mean ms", justify="right")
    for r in [*rows, *([embed_row] if embed_row else [])]:
        table.add_row(
            f"{r.size:,}",
            str(r.tenants),
            f"{100 // r.tenants}%",
            r.what,
            r.mode,
            str(r.queries),
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            f"{r.mean_ms:.2f}",
        )
    console.print(table)
    build_table = Table(title="Index build (batches of 1,000)")
    for col in ("chunks", "tenants", "upsert s", "upserts/s", "optimize s"):
        build_table.add_column(col, justify="right")
    for b in builds:
        build_table.add_row(
            f"{b.size:,}",
            str(b.tenants),
            f"{b.upsert_s:.1f}",
            f"{b.upserts_per_s:,.0f}",
            "-" if b.optimize_s is None else f"{b.optimize_s:.1f}",
        )
    console.print(build_table)


if __name__ == "__main__":
    main()
