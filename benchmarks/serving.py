"""Serving: `POST /v1/search` through HTTP against a real `freshrag up`, query embedding included,
idle and during full-speed ingest.

    .venv/bin/python -m benchmarks.serving [--sizes 10000 100000] [--queries 200] [--json out.json]
    (or as the `serving` section of `python -m benchmarks.bench`)

Per size:

1. An Edge shard of `size` synthetic chunks is built with `benchmarks.search_latency.build`
   (random unit dense vectors; the BM25 side is real English: SciFact abstracts cut into
   120-word pieces, cycled), all in the API key's tenant, so every search filters to and scans
   all of them. Then `EdgeStore.optimize()` builds the HNSW, as a user would with
   `freshrag optimize`.
2. `freshrag up` starts as a subprocess over that shard (FRESHRAG_INDEX_PATH, FRESHRAG_COLLECTION,
   a fresh topic on the broker, FRESHRAG_API_KEYS, a free port).
3. idle: real text queries (SciFact queries, every text distinct so the query cache never
   answers) are sent with httpx at concurrency 1 and 8 (closed loop: each of the N clients sends
   its next query when the last one returns). Latency is client-side, request to parsed answer.
4. during ingest: SciFact documents are produced to the topic `up` consumes, all at once, so the
   flow has a backlog and indexes at full speed (into the same shard and tenant). The ingest rate
   is read from `up`'s /metrics: alone for a short window, then during each query phase. The
   same query phases run again.

Reports p50/p95/p99/max and requests/s per (size, idle|ingest, concurrency), the ratios
"during ingest / idle", the ingest chunks/s meanwhile, and the peak RSS (VmHWM) of `up`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.rss import peak_rss_mb
from benchmarks.search_latency import WORDS_PER_CHUNK, Corpus, build, fill, optimize

ROOT = Path(__file__).resolve().parents[1]
SCIFACT_DIR = ROOT.parent / "shared/data/scifact"
SAMPLES = ROOT / "samples/docs"
TENANT = "t0"  # the tenant search_latency.build gives every point when tenants=1
API_KEY = "bench-serving-key-0123456789"
PIECE_WORDS = 120

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(f"[serving {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# --- data -------------------------------------------------------------------------------------


def _documents() -> list[tuple[str, str]]:
    """(title, text) of SciFact abstracts, or of the sample docs when SciFact is absent."""
    path = SCIFACT_DIR / "corpus.jsonl"
    if path.exists():
        with path.open() as fh:
            rows = [json.loads(line) for line in fh]
        return [(str(r.get("title", "")), str(r["text"])) for r in rows]
    return [(p.stem, p.read_text()) for p in sorted(SAMPLES.glob("*.md"))]


def chunk_texts(docs: Sequence[tuple[str, str]], words: int = PIECE_WORDS) -> list[str]:
    out: list[str] = []
    for _, text in docs:
        tokens = text.split()
        out.extend(" ".join(tokens[i : i + words]) for i in range(0, len(tokens), words))
    return [t for t in out if t]


def query_texts(docs: Sequence[tuple[str, str]]) -> list[str]:
    """SciFact's queries (distinct texts), or 8-word windows of the documents."""
    path = SCIFACT_DIR / "queries.jsonl"
    if path.exists():
        with path.open() as fh:
            texts = [str(json.loads(line)["text"]) for line in fh]
    else:
        rng = np.random.default_rng(3)
        texts = []
        for _, text in docs:
            words = text.split()
            for _ in range(20):
                at = int(rng.integers(0, max(1, len(words) - 8)))
                texts.append(" ".join(words[at : at + 8]))
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


class QueryPool:
    """Hands out query texts never sent before in this `up` process (its LRU cache never hits):
    the base texts first, then the same texts with a numbered suffix."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        self.n = 0

    def take(self, count: int) -> list[str]:
        out = []
        for _ in range(count):
            rnd, i = divmod(self.n, len(self.texts))
            out.append(self.texts[i] if rnd == 0 else f"{self.texts[i]} ({rnd})")
            self.n += 1
        return out


class TextCorpus(Corpus):
    """search_latency's corpus (random unit vectors) with real text pieces for BM25."""

    def __init__(self, size: int, texts: Sequence[str], seed: int = 7) -> None:
        super().__init__(size, seed)
        self.texts = list(texts)

    def text(self, i: int, words: int = WORDS_PER_CHUNK) -> str:
        return self.texts[i % len(self.texts)]


def ingest_events(docs: Sequence[tuple[str, str]], count: int) -> Iterator[dict[str, Any]]:
    """`count` upsert events of the documents (cycled, distinct ids) in the searched tenant."""
    for n in range(count):
        title, text = docs[n % len(docs)]
        yield {"op": "upsert", "id": f"bench-{n}", "tenant": TENANT, "title": title, "text": text}


# --- the API process --------------------------------------------------------------------------


class UpServer:
    """`freshrag up` as a subprocess over a prepared Edge shard; with `command="serve"`, the
    API alone (`freshrag serve`), over that shard or, with `store_env` (FRESHRAG_QDRANT_URL,
    FRESHRAG_QDRANT_API_KEY), over `collection` on a Qdrant server."""

    def __init__(
        self,
        workdir: Path,
        bootstrap: str,
        collection: str,
        *,
        command: str = "up",
        store_env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.command = command
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.topic = f"bench-serving-{uuid.uuid4().hex[:8]}"
        self.bootstrap = bootstrap
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("FRESHRAG_QDRANT_URL", "QDRANT_URL", "FRESHRAG_QDRANT_API_KEY")
        }
        self.env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "FRESHRAG_KAFKA_BOOTSTRAP": bootstrap,
                "FRESHRAG_TOPIC": self.topic,
                "FRESHRAG_DLQ_TOPIC": f"{self.topic}.dlq",
                "FRESHRAG_INDEX_PATH": str(workdir / "index"),
                "FRESHRAG_COLLECTION": collection,
                "FRESHRAG_API_HOST": "127.0.0.1",
                "FRESHRAG_API_PORT": str(self.port),
                "FRESHRAG_API_KEYS": f"{API_KEY}={TENANT}",
                # no LLM is needed for search; a closed port makes /readyz's LLM probe fail fast
                "FRESHRAG_OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
                **dict(store_env or {}),
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{command}-{collection}.log"
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def start(self, timeout: float = 600) -> float:
        started = time.perf_counter()
        args = ["up", "-r", str(self.workdir / "recovery")] if self.command == "up" else ["serve"]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "freshrag.cli", *args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"freshrag {self.command} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            try:
                if self.http.get("/readyz").status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"freshrag {self.command} not ready after {timeout}s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def metrics(self) -> dict[str, float]:
        """Ingest counters from /metrics: chunks written, records read, records finished."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.http.get("/metrics").text
        out = {"chunks": 0.0, "read": 0.0, "done": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "freshrag_ingest_chunks_written_total":
                    out["chunks"] += sample.value
                elif sample.name == "freshrag_ingest_records_read_total":
                    out["read"] += sample.value
                elif sample.name == "freshrag_ingest_events_total":
                    out["done"] += sample.value
        return out

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.proc.pid) if self.proc is not None else None

    def stop(self, timeout: float = 30) -> int | None:
        self.http.close()
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=30)


# --- the HTTP client --------------------------------------------------------------------------


async def _load(
    url: str, pool: QueryPool, count: int, concurrency: int, min_s: float
) -> tuple[list[float], list[float], list[str], float]:
    """Closed loop: `concurrency` clients each send their next query when the last returns,
    until `count` queries are sent and at least `min_s` seconds have passed. Returns client
    latencies (ms), the server's took_ms, errors and the wall time."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    took: list[float] = []
    errors: list[str] = []
    sent = 0
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=120, limits=limits
    ) as client:
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal sent
            while sent < count or time.perf_counter() - started < min_s:
                sent += 1  # one event loop: no other worker runs between the test and this
                (query,) = pool.take(1)
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/search", json={"query": query, "top_k": 10})
                    body = r.json()
                except (httpx.HTTPError, ValueError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                ms = (time.perf_counter() - t0) * 1000
                if r.status_code != 200 or not body.get("hits"):
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                latencies.append(ms)
                took.append(float(body.get("took_ms", 0.0)))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, took, errors, wall


def run_phase(
    url: str, pool: QueryPool, count: int, concurrency: int, min_s: float = 0.0
) -> dict[str, Any]:
    latencies, took, errors, wall = asyncio.run(_load(url, pool, count, concurrency, min_s))
    if not latencies:
        raise RuntimeError(f"every search failed: {errors[:3]}")
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": round(pct(latencies, 50), 2),
        "p95_ms": round(pct(latencies, 95), 2),
        "p99_ms": round(pct(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "mean_ms": round(float(np.mean(latencies)), 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "server_took_p50_ms": round(pct(took, 50), 2),
        "server_took_p99_ms": round(pct(took, 99), 2),
        "wall_s": round(wall, 2),
        "samples_ms": [round(x, 2) for x in latencies],
    }


# --- one size ---------------------------------------------------------------------------------


def _next_write(
    up: UpServer, above: float, min_wait_s: float, timeout_s: float = 300
) -> tuple[float, float]:
    """(chunks written, when) at the first counter value above `above` seen at least
    `min_wait_s` from now; polled every 0.1 s."""
    started = time.perf_counter()
    while True:
        now = time.perf_counter()
        chunks = up.metrics()["chunks"]
        if chunks > above and now - started >= min_wait_s:
            return chunks, now
        if now - started > timeout_s:
            raise RuntimeError(f"ingest wrote nothing in {timeout_s}s:\n{up.tail()}")
        time.sleep(0.1)


def _ingest_rate(up: UpServer, before: dict[str, float], seconds: float) -> float:
    return (up.metrics()["chunks"] - before["chunks"]) / seconds


def serve_size(
    size: int,
    workdir: Path,
    bootstrap: str,
    pool_texts: Sequence[str],
    docs: Sequence[tuple[str, str]],
    *,
    queries: int,
    queries_c8: int,
    ingest_docs: int,
    alone_s: float,
    min_phase_s: float,
    stop_timeout_s: float,
    log: Log,
) -> dict[str, Any]:
    from freshrag.core.sparse import Bm25Encoder

    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = TextCorpus(size, chunk_texts(docs))
    store, stats = build(workdir / "index", corpus, 1, Bm25Encoder(), log)
    collection = store.collection
    stats.optimize_s = optimize(store)
    store.close()
    build_s = time.perf_counter() - t0
    log(f"{size:,} chunks: built in {build_s:.1f}s (optimize {stats.optimize_s}s)")

    up = UpServer(workdir, bootstrap, collection)
    phases: list[dict[str, Any]] = []
    out: dict[str, Any] = {"size": size}
    try:
        start_s = up.start()
        log(f"freshrag up ready in {start_s:.1f}s on {up.url}")
        pool = QueryPool(pool_texts)
        run_phase(up.url, pool, 10, 2)  # warm-up: connections, first model calls

        plan = ((1, queries), (8, queries_c8))
        for concurrency, n in plan:
            phase = run_phase(up.url, pool, n, concurrency, min_phase_s)
            phases.append({"size": size, "state": "idle", **phase})
            log(f"idle c{concurrency}: p50 {phase['p50_ms']} p99 {phase['p99_ms']} ms")
        rss_idle = up.peak_rss_mb()

        from freshrag.ingest.loader import produce_events

        started = time.perf_counter()
        produced = produce_events(bootstrap, up.topic, ingest_events(docs, ingest_docs))
        log(f"produced {produced} documents in {time.perf_counter() - started:.1f}s")
        # Ingest alone: from one batch write to the first one at least `alone_s` later (the
        # counter moves a batch at a time, so a fixed window could see none).
        first, t_first = _next_write(up, 0.0, 0.0)
        last, t_last = _next_write(up, first, alone_s)
        alone_rate = (last - first) / (t_last - t_first)
        log(f"ingest alone: {alone_rate:.1f} chunks/s over {t_last - t_first:.1f}s")
        during_from, t_during = up.metrics(), time.perf_counter()
        for concurrency, n in plan:
            before = up.metrics()
            phase = run_phase(up.url, pool, n, concurrency, min_phase_s)
            after = up.metrics()
            rate = (after["chunks"] - before["chunks"]) / phase["wall_s"]
            exhausted = after["read"] >= produced and after["done"] >= after["read"]
            phases.append(
                {
                    "size": size,
                    "state": "ingest",
                    **phase,
                    "ingest_chunks_per_s": round(rate, 2),
                    "ingest_backlog_exhausted": exhausted,
                }
            )
            log(
                f"ingest c{concurrency}: p50 {phase['p50_ms']} p99 {phase['p99_ms']} ms, "
                f"ingest {rate:.1f} chunks/s"
            )
        during_rate = _ingest_rate(up, during_from, time.perf_counter() - t_during)
        out.update(
            {
                "build_s": round(build_s, 1),
                "upserts_per_s": round(stats.upserts_per_s, 1),
                "optimize_s": None if stats.optimize_s is None else round(stats.optimize_s, 1),
                "up_start_s": round(start_s, 1),
                "ingest_alone_chunks_per_s": round(alone_rate, 2),
                "ingest_during_chunks_per_s": round(during_rate, 2),
                "ingest_ratio_during_vs_alone": (
                    round(during_rate / alone_rate, 2) if alone_rate > 0 else None
                ),
                "documents_produced": produced,
                "up_peak_rss_mb_idle": None if rss_idle is None else round(rss_idle, 1),
                "up_peak_rss_mb": _round(up.peak_rss_mb()),
                "phases": phases,
            }
        )
    finally:
        # SIGTERM; with a backlog in flight the flow may take long to drain, and the index is
        # thrown away anyway, so after `stop_timeout_s` it is killed (reported as up_exit -9)
        t_stop = time.perf_counter()
        code = up.stop(timeout=stop_timeout_s)
        out["up_stop_s"] = round(time.perf_counter() - t_stop, 1)
        out["up_exit"] = code
        log(f"freshrag up stopped in {out['up_stop_s']}s (exit {code})")
        if code not in (0, None, -signal.SIGKILL):
            log(f"freshrag up exited with {code}:\n{up.tail()}")
    return out


def wait_server_indexed(store: Any, timeout_s: float = 900) -> float:
    """Seconds until a Qdrant server collection is green (its optimizers, HNSW included, done),
    so the server is measured optimized, like the Edge shard after `optimize()`."""
    from qdrant_client import models

    started = time.perf_counter()
    while True:
        info = store.client.get_collection(store.collection)
        if info.status == models.CollectionStatus.GREEN:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"collection {store.collection} not green after {timeout_s}s")
        time.sleep(0.5)


def serve_search(
    size: int,
    workdir: Path,
    bootstrap: str,
    pool_texts: Sequence[str],
    docs: Sequence[tuple[str, str]],
    *,
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
    queries: int,
    queries_c8: int,
    min_phase_s: float = 0.0,
    log: Log = _print,
) -> dict[str, Any]:
    """Idle search latency through `freshrag serve` (HTTP /v1/search, query embedding included)
    over `size` synthetic chunks: on a fresh Edge shard (optimized), or, with `qdrant_url`, on a
    fresh collection of that Qdrant server (once the server has indexed it; dropped after)."""
    from freshrag.core.sparse import Bm25Encoder
    from freshrag.retrieve.stores import open_store

    backend = "Qdrant server" if qdrant_url else "Qdrant Edge"
    workdir.mkdir(parents=True, exist_ok=True)
    collection = f"bench_serve_{size}_{uuid.uuid4().hex[:8]}"
    with warnings.catch_warnings():  # "Api key is used with an insecure connection": loopback
        warnings.simplefilter("ignore", UserWarning)
        store = open_store(qdrant_url, workdir / "index", collection, api_key=qdrant_api_key)
    store.ensure_collection()
    t0 = time.perf_counter()
    upsert_s = fill(store, TextCorpus(size, chunk_texts(docs)), 1, Bm25Encoder())
    index_s = wait_server_indexed(store) if qdrant_url else optimize(store)  # type: ignore[arg-type]
    points = store.count()
    store.close()
    build_s = time.perf_counter() - t0
    log(f"{backend}, {size:,} chunks: {points} points, built in {build_s:.1f}s")
    store_env = {}
    if qdrant_url:
        store_env["FRESHRAG_QDRANT_URL"] = qdrant_url
        if qdrant_api_key:
            store_env["FRESHRAG_QDRANT_API_KEY"] = qdrant_api_key
    api = UpServer(workdir, bootstrap, collection, command="serve", store_env=store_env)
    out: dict[str, Any] = {
        "backend": backend,
        "size": size,
        "points": points,
        "build_s": round(build_s, 1),
        "upserts_per_s": round(size / upsert_s, 1) if upsert_s > 0 else None,
        "index_s": None if index_s is None else round(index_s, 1),
    }
    phases: list[dict[str, Any]] = []
    try:
        out["serve_start_s"] = round(api.start(), 1)
        pool = QueryPool(pool_texts)
        run_phase(api.url, pool, 10, 2)  # warm-up: connections, first model calls
        for concurrency, n in ((1, queries), (8, queries_c8)):
            phase = run_phase(api.url, pool, n, concurrency, min_phase_s)
            phases.append({"backend": backend, "size": size, "state": "idle", **phase})
            log(f"{backend} c{concurrency}: p50 {phase['p50_ms']} p99 {phase['p99_ms']} ms")
        out["serve_peak_rss_mb"] = _round(api.peak_rss_mb())
    finally:
        out["serve_exit"] = api.stop()
        if qdrant_url:
            from benchmarks.ingest_throughput import drop_server_collection

            drop_server_collection(qdrant_url, qdrant_api_key, collection)
    out["phases"] = phases
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def ratios(phases: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """During ingest against idle, per (size, concurrency): latency and requests/s ratios."""
    idle = {(p["size"], p["concurrency"]): p for p in phases if p["state"] == "idle"}
    out = []
    for p in phases:
        base = idle.get((p["size"], p["concurrency"]))
        if p["state"] != "ingest" or base is None:
            continue
        out.append(
            {
                "size": p["size"],
                "concurrency": p["concurrency"],
                "p50_ratio": round(p["p50_ms"] / base["p50_ms"], 2),
                "p99_ratio": round(p["p99_ms"] / base["p99_ms"], 2),
                "requests_per_s_ratio": round(p["requests_per_s"] / base["requests_per_s"], 2),
            }
        )
    return out


def run(
    sizes: Sequence[int] = (10_000, 100_000),
    *,
    bootstrap: str | None = None,
    workdir: Path | None = None,
    queries: int = 200,
    queries_c8: int | None = None,
    ingest_docs: int = 5_183,
    alone_s: float = 10.0,
    min_phase_s: float = 20.0,
    stop_timeout_s: float = 30.0,
    log: Log = _print,
) -> dict[str, Any]:
    """The serving section: one `freshrag up` per size; see the module docstring."""
    import tempfile

    bootstrap = bootstrap or os.environ.get("FRESHRAG_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    docs = _documents()
    pool_texts = query_texts(docs)
    sizes_out = []
    with tempfile.TemporaryDirectory(prefix="freshrag-serving-", dir=workdir) as tmp:
        for size in sizes:
            sizes_out.append(
                serve_size(
                    size,
                    Path(tmp) / str(size),
                    bootstrap,
                    pool_texts,
                    docs,
                    queries=queries,
                    queries_c8=queries_c8 if queries_c8 is not None else 2 * queries,
                    ingest_docs=ingest_docs,
                    alone_s=alone_s,
                    min_phase_s=min_phase_s,
                    stop_timeout_s=stop_timeout_s,
                    log=log,
                )
            )
    phases = [p for s in sizes_out for p in s["phases"]]
    return {
        "settings": {
            "sizes": list(sizes),
            "queries_c1": queries,
            "queries_c8": queries_c8 if queries_c8 is not None else 2 * queries,
            "query_texts": "SciFact queries"
            if (SCIFACT_DIR / "queries.jsonl").exists()
            else "8-word windows of the sample docs",
            "ingest_docs": ingest_docs,
            "min_phase_s": min_phase_s,
            "request": {"top_k": 10, "mode": "hybrid"},
            "shard": "synthetic chunks (random unit vectors, SciFact text pieces for BM25), "
            "optimized (HNSW) before `freshrag up` starts",
        },
        "tenant_points": "all chunks in the API key's tenant (the filter keeps 100%)",
        "sizes": [{k: v for k, v in s.items() if k != "phases"} for s in sizes_out],
        "phases": [{k: v for k, v in p.items() if k != "samples_ms"} for p in phases],
        "ratios": ratios(phases),
        "samples_ms": {
            f"{p['size']:,} chunks, {p['state']}, c{p['concurrency']}": p["samples_ms"]
            for p in phases
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200, help="per phase at concurrency 1")
    ap.add_argument("--ingest-docs", type=int, default=5_183)
    ap.add_argument("--alone-s", type=float, default=10.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    result = run(
        args.sizes, queries=args.queries, ingest_docs=args.ingest_docs, alone_s=args.alone_s
    )
    shown = {k: v for k, v in result.items() if k != "samples_ms"}
    print(json.dumps(shown, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
