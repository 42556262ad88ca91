"""Edge hybrid search latency before, during and after an online HNSW optimize.

Run: `python -m benchmarks.edge_online_optimize [--size 100000] [--json out.json]`.

Builds an Edge shard of `size` synthetic chunks (the helpers of `benchmarks.search_latency`:
random unit vectors, BM25 vectors of Zipf text, 10 tenants), then times
`HybridSearcher.search` (dense + BM25 + RRF, the API's function, query vectors precomputed)
while a writer thread keeps upserting chunks at a fixed rate, like ingest (new ids cycling over
a pool of size/10, so a long optimize does not double the shard):

- before: the shard as ingest leaves it (dense search is a full scan);
- during: `EdgeStore.optimize_online()` runs (copy, optimizer subprocess, journal replay, swap);
- after: on the swapped-in shard, with the HNSW graph.

Also reports the optimize's phases, how long writes waited (the copy and the final swap), and
the writer's upsert latency. `run()` returns a plain dict for `benchmarks.bench`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.search_latency import (
    NOW,
    Corpus,
    PrecomputedEmbedder,
    build,
    percentile,
    queries_for,
)
from freshrag.core.sparse import Bm25Encoder
from freshrag.retrieve.contract import ChunkPoint, SearchFilter
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.search import HybridSearcher, SearchRequest

TENANTS = 10
SMALL_SHARD = 20_000  # below this the engine's default threshold leaves segments plain


class Writer(threading.Thread):
    """Upserts `batch` new chunks every `batch / rate` seconds until stopped; records latency."""

    def __init__(
        self, store: EdgeStore, corpus: Corpus, bm25: Bm25Encoder, rate: float, pool: int
    ) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self.store, self.corpus, self.bm25 = store, corpus, bm25
        self.pool = pool  # new ids cycle through this many, so the shard grows by at most it
        self.batch = 10
        self.period = self.batch / rate if rate > 0 else 0.0
        self.stop = threading.Event()
        self.written = 0
        self.upserts: list[tuple[float, float]] = []  # (start, ms)
        self.errors: list[str] = []

    def chunks(self, n: int) -> list[ChunkPoint]:
        out = []
        for k in range(n):
            i = (self.written + k) % self.corpus.size  # reuse vectors; new ids
            text = self.corpus.text(i)
            out.append(
                ChunkPoint(
                    tenant=f"t{i % TENANTS}",
                    doc_id=f"new-{(self.written + k) % self.pool}",
                    version=1,
                    chunk_index=0,
                    chunk_count=1,
                    text=text,
                    title="new",
                    url=None,
                    source="bench",
                    updated_at=NOW - timedelta(hours=i % 5000),
                    indexed_at=NOW,
                    metadata={"bucket": i % 7},
                    dense=self.corpus.vectors[i].tolist(),
                    sparse=self.bm25.embed_documents([text])[0],
                )
            )
        return out

    def run(self) -> None:
        if self.period <= 0:
            return
        next_at = time.perf_counter()
        while not self.stop.is_set():
            points = self.chunks(self.batch)
            started = time.perf_counter()
            try:
                self.store.upsert_chunks(points)
            except Exception as exc:  # the figures say so; the run goes on
                self.errors.append(repr(exc))
            self.upserts.append((started, (time.perf_counter() - started) * 1000))
            self.written += self.batch
            next_at += self.period
            self.stop.wait(max(0.0, next_at - time.perf_counter()))


def summary(phase: str, ms: Sequence[float]) -> dict[str, Any]:
    if not ms:
        return {"phase": phase, "searches": 0}
    return {
        "phase": phase,
        "searches": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "max_ms": max(ms),
    }


def run(
    size: int = 100_000,
    *,
    searches: int = 300,
    search_interval_s: float = 0.02,
    write_rate: float = 100.0,
    indexing_threshold_kb: int | None = None,
    path: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Search p50/p99 before / during / after `optimize_online` on a `size`-chunk shard while
    a writer upserts `write_rate` chunks/s. Searches are paced `search_interval_s` apart (one
    client, back to back otherwise). `indexing_threshold_kb`: the engine's default, or 1 KB on
    shards under 20k chunks so the graph is really built there."""
    if indexing_threshold_kb is None and size < SMALL_SHARD:
        indexing_threshold_kb = 1
    bm25 = Bm25Encoder()
    corpus = Corpus(size)
    queries = queries_for(corpus, 200)
    with tempfile.TemporaryDirectory(prefix="freshrag-online-opt-", dir=path) as tmp:
        started = time.perf_counter()
        store, stats = build(Path(tmp), corpus, TENANTS, bm25, log)
        build_s = time.perf_counter() - started
        searcher = HybridSearcher(store, PrecomputedEmbedder({t: v for t, v, _ in queries}), bm25)
        n = 0
        errors: list[str] = []

        def search() -> float:
            nonlocal n
            text, _, i = queries[n % len(queries)]
            n += 1
            req = SearchRequest(text, SearchFilter(f"t{i % TENANTS}"), top_k=10, mode="hybrid")
            begun = time.perf_counter()
            try:
                if not searcher.search(req).hits:
                    errors.append(f"no hits for {text!r}")
            except Exception as exc:
                errors.append(repr(exc))
            ms = (time.perf_counter() - begun) * 1000
            time.sleep(search_interval_s)
            return ms

        for _ in range(20):  # warm up
            search()
        writer = Writer(store, corpus, bm25, write_rate, pool=max(1_000, size // 10))
        writer.start()
        unindexed_before = store.unindexed_points()
        before = [search() for _ in range(searches)]
        log(f"before: {len(before)} searches, p99 {percentile(before, 99):.1f} ms")

        steps: dict[str, float] = {}

        def mark(step: str) -> None:
            steps.setdefault(step, time.perf_counter())

        store.step_hook = mark
        outcome: list[Any] = []
        failure: list[BaseException] = []

        def optimize() -> None:
            try:
                outcome.append(store.optimize_online(indexing_threshold_kb=indexing_threshold_kb))
            except BaseException as exc:
                failure.append(exc)

        optimizer = threading.Thread(target=optimize, name="bench-optimize")
        opt_started = time.perf_counter()
        optimizer.start()
        during: list[tuple[float, float]] = []
        while optimizer.is_alive():
            at = time.perf_counter()
            during.append((at, search()))
        optimizer.join()
        opt_ended = time.perf_counter()
        if failure:
            writer.stop.set()
            store.close()
            raise RuntimeError(f"online optimize failed: {failure[0]}") from failure[0]
        result = outcome[0]
        log(f"online optimize: {result.total_s:.1f} s, {len(during)} searches meanwhile")
        for _ in range(20):  # the new shard's first queries page its files in
            search()
        after = [search() for _ in range(searches)]
        writer.stop.set()
        writer.join()
        unindexed_after = store.unindexed_points()
        store.close()

    during_ms = [ms for _, ms in during]
    swap_from = steps.get("opened", opt_ended)
    phases = [
        summary("before", before),
        summary("during", during_ms),
        summary("after", after),
        summary("during: copy + optimizer", [ms for at, ms in during if at < swap_from]),
        summary("during: replay + swap", [ms for at, ms in during if at >= swap_from]),
    ]
    upserts_during = [ms for at, ms in writer.upserts if opt_started <= at <= opt_ended]
    slowest = max(during, key=lambda d: d[1], default=(0.0, 0.0))
    # the optimize's steps reached while the slowest search ran (or the one it ran in)
    spanned = [k for k, t in steps.items() if slowest[0] <= t <= slowest[0] + slowest[1] / 1000]
    last = [k for k, t in steps.items() if t < slowest[0]]
    slowest_during = {
        "ms": slowest[1],
        "at_s": slowest[0] - opt_started,
        "after_step": last[-1] if last else "start",
        "steps_while_running": spanned,
    }
    return {
        "size": size,
        "tenants": TENANTS,
        "build_s": build_s,
        "upserts_per_s_build": stats.upserts_per_s,
        "indexing_threshold_kb": indexing_threshold_kb,
        "write_rate": write_rate,
        "search_interval_s": search_interval_s,
        "phases": phases,
        "samples_ms": {"before": before, "during": during_ms, "after": after},
        "optimize": asdict(result),
        "steps_s": {k: v - opt_started for k, v in sorted(steps.items(), key=lambda kv: kv[1])},
        "writer": {
            "chunks_written": writer.written,
            "errors": len(writer.errors),
            "upserts_during": len(upserts_during),
            "upsert_p50_ms_during": percentile(upserts_during, 50) if upserts_during else None,
            "upsert_max_ms_during": max(upserts_during) if upserts_during else None,
        },
        "slowest_during": slowest_during,
        "new_id_pool": writer.pool,
        "unindexed_before": unindexed_before,
        "unindexed_after": unindexed_after,
        "search_errors": errors[:10],
        "search_error_count": len(errors),
    }


def print_results(console: Console, res: dict[str, Any]) -> None:
    table = Table(
        title=f"Hybrid search while optimizing online, {res['size']:,} chunks, "
        f"{res['tenants']} tenants, writer at {res['write_rate']:.0f} chunks/s"
    )
    for col in ("phase", "searches", "p50 ms", "p99 ms", "mean ms", "max ms"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for p in res["phases"]:
        if not p["searches"]:
            continue
        table.add_row(
            p["phase"],
            str(p["searches"]),
            f"{p['p50_ms']:.2f}",
            f"{p['p99_ms']:.2f}",
            f"{p['mean_ms']:.2f}",
            f"{p['max_ms']:.2f}",
        )
    console.print(table)
    opt = res["optimize"]
    w = res["writer"]
    console.print(
        f"optimize_online: total {opt['total_s']:.1f} s = copy {opt['copy_s']:.2f} s (writes "
        f"wait) + optimizer subprocess {opt['optimize_s']:.1f} s + replay {opt['replay_s']:.2f} s "
        f"+ swap {opt['swap_s']:.2f} s (writes wait); {opt['journaled_ops']} writes journaled, "
        f"{opt['replayed_early']} replayed before the swap; unindexed points "
        f"{res['unindexed_before']:,} -> {res['unindexed_after']:,} (writer's new ones)"
    )
    if w["upserts_during"]:
        console.print(
            f"writer during the optimize: {w['upserts_during']} upserts of 10 chunks, p50 "
            f"{w['upsert_p50_ms_during']:.1f} ms, max {w['upsert_max_ms_during']:.0f} ms; "
            f"errors {w['errors']}; search errors {res['search_error_count']}"
        )
    sd = res["slowest_during"]
    console.print(
        f"slowest search during: {sd['ms']:.0f} ms at {sd['at_s']:.1f} s, after step "
        f"{sd['after_step']!r}, steps meanwhile {sd['steps_while_running']}"
    )
    console.print(f"build {res['build_s']:.1f} s; steps (s from start): {res['steps_s']}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--searches", type=int, default=300)
    ap.add_argument("--write-rate", type=float, default=100.0, help="chunks/s (0: no writer)")
    ap.add_argument("--indexing-threshold-kb", type=int, default=None)
    ap.add_argument("--path", type=Path, default=None, help="parent of the temp index folder")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    console = Console(width=max(Console().width, 120))
    res = run(
        args.size,
        searches=args.searches,
        write_rate=args.write_rate,
        indexing_threshold_kb=args.indexing_threshold_kb,
        path=args.path,
        log=console.log,
    )
    print_results(console, res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
