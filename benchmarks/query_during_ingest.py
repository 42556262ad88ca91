"""Search latency during full-speed ingest, next to idle, and what query priority costs ingest.

    .venv/bin/python -m benchmarks.query_during_ingest [--batch 128] [--seconds 20]
        [--sub-batches 128 32 16 4] [--qps 2]

One real embedder is shared, as under `freshrag up`, by an ingest thread and a search client:

- the ingest thread runs the ingest's work at full speed: cross-document batches of `--batch`
  chunks (SciFact abstracts chunked like the flow, or the sample docs), embedded with
  `Embedder.embed_documents`, BM25-encoded and upserted into a Qdrant Edge shard;
- the client sends `HybridSearcher.search` (the function behind POST /v1/search, query
  embedding included, query cache off) at `--qps`, open loop.

For each configuration the ingest rate is measured alone and with the searches running, and the
search latency p50/p99 during ingest is printed next to the idle figures. Configurations:

- `shared:N`: one model for both, ingest cut into sub-batches of N chunks, a waiting query
  goes before the next sub-batch (query priority). N equal to `--batch` is the behaviour before
  query priority: a query waits for the whole batch (in the flow a batch is up to 64 documents,
  so up to thousands of chunks: the wait grows with it);
- `separate:N`: the searches use a second model instance of their own (no shared lock), so a
  query never waits for ingest but competes with it for the cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.embed_throughput import load_texts
from freshrag.core.embedder import Embedder
from freshrag.core.sparse import Bm25Encoder
from freshrag.ingest.chunking import chunk_document, embedding_text
from freshrag.retrieve.contract import ChunkPoint, SearchFilter
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.search import HybridSearcher, SearchRequest

TENANT = "bench"


@dataclass
class Row:
    config: str
    ingest_alone_chunks_s: float
    ingest_with_search_chunks_s: float
    searches: int
    search_p50_ms: float
    search_p99_ms: float
    search_max_ms: float


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Ingest:
    """Full-speed ingest in a thread: embed, BM25, upsert; counts chunks as sub-batches land."""

    def __init__(
        self, embedder: Embedder, store: EdgeStore, chunks: list[tuple[str, str]], batch: int
    ) -> None:
        self.embedder, self.store, self.chunks, self.batch = embedder, store, chunks, batch
        self.bm25 = Bm25Encoder()
        self.stop = threading.Event()
        self.encoded: list[tuple[float, int]] = []  # (time, texts) per document sub-batch
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.passes = 0

    def _listen(self, kind: str, n: int) -> None:
        if kind == "documents":
            self.encoded.append((time.perf_counter(), n))

    def _run(self) -> None:
        now = datetime.now(UTC)
        start = 0
        while not self.stop.is_set():
            picked = [self.chunks[(start + i) % len(self.chunks)] for i in range(self.batch)]
            start += self.batch
            self.passes += 1
            texts = [text for _, text in picked]
            dense = self.embedder.embed_documents(texts)
            sparse = self.bm25.embed_documents(texts)
            self.store.upsert_chunks(
                [
                    ChunkPoint(
                        tenant=TENANT,
                        doc_id=f"p{self.passes}-{doc}",
                        version=1,
                        chunk_index=i,
                        chunk_count=len(picked),
                        text=text,
                        title=doc,
                        url=None,
                        source="bench",
                        updated_at=now,
                        indexed_at=now,
                        metadata={},
                        dense=d,
                        sparse=s,
                    )
                    for i, ((doc, text), d, s) in enumerate(zip(picked, dense, sparse, strict=True))
                ]
            )

    def rate(self, since: float, until: float) -> float:
        done = sum(n for t, n in self.encoded if since <= t <= until)
        return done / (until - since)

    def __enter__(self) -> Ingest:
        self.embedder.on_encode = self._listen
        self.thread.start()
        while not self.encoded:  # warmed up: the first sub-batch landed
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.embedder.on_encode = None


def searches(
    searcher: HybridSearcher, queries: list[str], seconds: float, qps: float
) -> list[float]:
    """Open-loop client: one search every 1/qps s (the next starts at once when late)."""
    out: list[float] = []
    started = time.perf_counter()
    n = 0
    while time.perf_counter() - started < seconds:
        due = started + n / qps
        time.sleep(max(0.0, due - time.perf_counter()))
        q = queries[n % len(queries)] + f" {n}"  # unique: never a cache hit
        t0 = time.perf_counter()
        result = searcher.search(SearchRequest(q, SearchFilter(TENANT), top_k=10))
        out.append((time.perf_counter() - t0) * 1000)
        if not result.hits:
            raise RuntimeError(f"no hits for {q!r}")
        n += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="documents to chunk and cycle")
    parser.add_argument("--batch", type=int, default=128, help="chunks per ingest batch")
    parser.add_argument(
        "--configs", nargs="+", default=["shared:128", "shared:16", "shared:4", "separate:128"]
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--qps", type=float, default=2.0)
    parser.add_argument("--idle-queries", type=int, default=60)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    embedder = Embedder(batch_size=64, query_cache_size=0)
    chunks = [
        (f"doc{d}", embedding_text(c))
        for d, (title, text) in enumerate(load_texts(args.docs))
        for c in chunk_document(text, title, embedder, 200, 32)
    ]
    words = [c.split() for _, c in chunks]
    rng = np.random.default_rng(5)
    queries = []
    for ws in words[:: max(1, len(words) // 50)]:
        at = int(rng.integers(0, max(1, len(ws) - 8)))
        queries.append(" ".join(ws[at : at + 8]))

    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(Path(tmp), "bench_ingest_query")
        store.ensure_collection()
        searcher = HybridSearcher(store, embedder, Bm25Encoder())
        print(f"{len(chunks)} chunks from {args.docs} documents; batches of {args.batch} chunks")
        with Ingest(embedder, store, chunks, args.batch) as warm:  # an index to search
            while sum(n for _, n in warm.encoded) < args.batch:
                time.sleep(0.1)
        searches(searcher, queries, 2.0, 10.0)  # warm-up
        idle = searches(searcher, queries, args.idle_queries / args.qps, args.qps)
        print(
            f"idle search: p50 {pct(idle, 50):.1f} ms, p99 {pct(idle, 99):.1f} ms "
            f"({len(idle)} searches)"
        )

        rows = []
        for config in args.configs:
            kind, _, sub = config.partition(":")
            embedder.sub_batch_size = int(sub)
            searcher = HybridSearcher(
                store,
                Embedder(batch_size=64, query_cache_size=0) if kind == "separate" else embedder,
                Bm25Encoder(),
            )
            with Ingest(embedder, store, chunks, args.batch) as ingest:
                t0 = time.perf_counter()
                time.sleep(args.seconds)
                alone = ingest.rate(t0, time.perf_counter())
                t1 = time.perf_counter()
                timings = searches(searcher, queries, args.seconds, args.qps)
                mixed = ingest.rate(t1, time.perf_counter())
            rows.append(
                Row(
                    config,
                    round(alone, 1),
                    round(mixed, 1),
                    len(timings),
                    round(pct(timings, 50), 1),
                    round(pct(timings, 99), 1),
                    round(max(timings), 1),
                )
            )
            print(rows[-1])
        store.close()

    print()
    print(f"idle search p50 {pct(idle, 50):.1f} ms, p99 {pct(idle, 99):.1f} ms")
    print(
        "| query path | ingest alone (chunks/s) | ingest + search (chunks/s) | search p50 ms "
        "| search p99 ms | max ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        kind, _, sub = r.config.partition(":")
        label = (
            f"separate model (ingest sub-batch {sub})"
            if kind == "separate"
            else f"shared, sub-batch {sub}" + (" (whole batch)" if int(sub) >= args.batch else "")
        )
        print(
            f"| {label} | {r.ingest_alone_chunks_s} | {r.ingest_with_search_chunks_s} | "
            f"{r.search_p50_ms} | {r.search_p99_ms} | {r.search_max_ms} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "idle_p50_ms": pct(idle, 50),
                    "idle_p99_ms": pct(idle, 99),
                    "idle_mean_ms": statistics.fmean(idle),
                    "rows": [asdict(r) for r in rows],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
