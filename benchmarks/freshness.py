"""Freshness: produce -> visible in `/v1/search`, per event, under the embedded `freshrag up`.

    .venv/bin/python -m benchmarks.freshness [--rates 5 20 50] [--duration 30] [--no-levers]

`freshrag up` runs as a subprocess (Qdrant Edge shard, fresh topic, index and recovery dir, a
free API port, one API key). A paced producer sends documents of about `doc_bytes` (SciFact
text) at a fixed rate; each carries a unique marker word in its title and text. One poller
thread cycles over the documents not yet seen: one `POST /v1/search` per 100 of them
(`mode: bm25`, so no query embedding competes with ingest; the query is their markers;
`filters.doc_ids` restricts it to them; `dedupe`), then sleeps `poll_interval_s`. An event's
latency is (response received that first showed it) - (just before `produce()`), an upper
bound; `poll_resolution_ms` is how far it can be from the lower bound (the request before,
which did not show it). An event not seen `visible_timeout_s` after its produce is counted in
`not_visible`, never dropped. The server-side figure next to it is the flow's own histogram
`freshrag_ingest_freshness_lag_seconds` (Kafka record timestamp -> written to the index),
read from `/metrics` before and after each phase, quantiles interpolated within its buckets;
and `GET /v1/freshness`'s own percentiles over the phase's writes (`api_freshness`, the "API
p50/p99" column), which should agree with the client's within its poll resolution.

Then the levers, each on a fresh `freshrag up` at `lever_rate` (20 docs/s): the embedding
batch's max wait (FRESHRAG_EMBED_MAX_WAIT_MS), its size (FRESHRAG_EMBED_BATCH_SIZE) and the
snapshot interval (`freshrag up -s`), each with freshness at that rate and the ingest capacity
(docs/s of a burst of `burst_docs` documents produced at once, from the flow's outcome counter).

And "a small update behind a large document": one `large_doc_bytes` document, then at once a
small one; the small one's latency, with the large-document lane off
(FRESHRAG_EMBED_BACKGROUND_MIN_CHUNKS=1000000: everything in one batch, as before) and on
(the default), next to a small document alone.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.ingest_throughput import (
    CORPUS,
    ROOT,
    base_env,
    create_topic,
    delete_topics,
    free_port,
    kafka_broker,
    load_average,
    log_tail,
    outcomes,
    percentile,
    proc_status_kb,
    scrape,
    stop_process,
    total,
)

API_KEY = "bench-freshness-key-0123456789"
TENANT = "bench"
MAX_IDS_PER_SEARCH = 100  # Filters.doc_ids max_length
LAG_METRIC = "freshrag_ingest_freshness_lag_seconds"
BACKGROUND_METRIC = "freshrag_ingest_background_records_total"
TARGET_P99_MS = 1000.0

# The levers at lever_rate: (lever, value, env, `freshrag up -s` seconds). Defaults: max wait
# 200 ms, batch 64, snapshot 2 s (the "default" row).
DEFAULT_SNAPSHOT_S = 2.0
DEFAULT_LEVERS: tuple[tuple[str, str, dict[str, str], float], ...] = (
    (
        "default",
        "max wait 200 ms, batch 64, snapshot 2 s, fetch wait 100 ms",
        {},
        DEFAULT_SNAPSHOT_S,
    ),
    ("embed_max_wait_ms", "20", {"FRESHRAG_EMBED_MAX_WAIT_MS": "20"}, DEFAULT_SNAPSHOT_S),
    ("embed_max_wait_ms", "50", {"FRESHRAG_EMBED_MAX_WAIT_MS": "50"}, DEFAULT_SNAPSHOT_S),
    ("embed_batch_size", "8", {"FRESHRAG_EMBED_BATCH_SIZE": "8"}, DEFAULT_SNAPSHOT_S),
    ("embed_batch_size", "16", {"FRESHRAG_EMBED_BATCH_SIZE": "16"}, DEFAULT_SNAPSHOT_S),
    ("snapshot_interval_s", "0.5", {}, 0.5),
    ("snapshot_interval_s", "10", {}, 10.0),
    (
        "kafka_fetch_wait_max_ms",
        "500 (librdkafka default)",
        {"FRESHRAG_KAFKA_FETCH_WAIT_MAX_MS": "500"},
        DEFAULT_SNAPSHOT_S,
    ),
)
LARGE_DOC_CONFIGS: tuple[tuple[str, dict[str, str]], ...] = (
    ("one lane (large-document lane off)", {"FRESHRAG_EMBED_BACKGROUND_MIN_CHUNKS": "1000000"}),
    ("default settings", {}),
)


# --- documents ---------------------------------------------------------------------------------


class DocFactory:
    """~N-byte documents of SciFact prose, each with a unique marker word (letters only, so
    the BM25 tokenizer keeps it whole) in its title and text."""

    def __init__(self, corpus: Path = CORPUS, run_id: str | None = None) -> None:
        texts: list[str] = []
        with corpus.open(encoding="utf-8") as fh:
            for line in fh:
                text = json.loads(line).get("text") or ""
                if text:
                    texts.append(text)
                if len(texts) >= 400:
                    break
        self.pool = " ".join(texts)
        self.run_id = run_id or secrets.token_hex(3)
        self.n = 0

    def marker(self, n: int) -> str:
        digits = string.ascii_lowercase
        value, out = n * 7919 + int(self.run_id, 16), ""
        while value or len(out) < 6:
            value, d = divmod(value, 26)
            out += digits[d]
        return "zqx" + out

    def make(self, size: int) -> tuple[str, str, dict[str, Any]]:
        """(doc id, marker, native upsert event) of about `size` bytes of JSON."""
        self.n += 1
        doc_id = f"fresh-{self.run_id}-{self.n}"
        marker = self.marker(self.n)
        start = (self.n * 977) % max(1, len(self.pool) - 2000)
        body = self.pool[start:] + " " + self.pool
        while len(body) < size:
            body += " " + self.pool
        text = f"{marker} {body[: max(0, size - 150)]}"
        event = {
            "op": "upsert",
            "id": doc_id,
            "tenant": TENANT,
            "title": f"Probe {marker}",
            "text": text,
            "source": "bench",
        }
        return doc_id, marker, event


# --- the server --------------------------------------------------------------------------------


@dataclass
class UpServer:
    url: str
    pid: int
    proc: subprocess.Popen[bytes]
    topic: str
    workdir: Path
    startup_s: float
    log: Path

    def metrics(self, http: httpx.Client) -> dict[str, float]:
        return scrape(http, f"{self.url}/metrics")

    def peak_rss_mb(self) -> float | None:
        kb = proc_status_kb(self.pid, "VmHWM")
        return None if kb is None else round(kb / 1024, 1)


@contextmanager
def up_server(
    bootstrap: str,
    env: Mapping[str, str] | None = None,
    snapshot_interval: float = DEFAULT_SNAPSHOT_S,
    workers: int = 1,
    ready_timeout: float = 300,
) -> Iterator[UpServer]:
    """`freshrag up` on a fresh topic, Edge shard and recovery dir, until /readyz says 200."""
    topic = create_topic(bootstrap, "bench-fresh", 4)
    workdir = Path(tempfile.mkdtemp(prefix="bench-fresh-"))
    port = free_port()
    log = workdir / "up.log"
    full_env = base_env(
        bootstrap,
        topic,
        workdir,
        FRESHRAG_API_PORT=str(port),
        FRESHRAG_API_KEYS=f"{API_KEY}={TENANT}",
        # no LLM is needed; /readyz reports it "degraded" without failing
        FRESHRAG_OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
        **dict(env or {}),
    )
    cmd = [sys.executable, "-m", "freshrag.cli", "up", "-w", str(workers)]
    cmd += ["-r", str(workdir / "recovery"), "-s", str(snapshot_interval)]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=full_env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = started + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"freshrag up exited with {proc.returncode}:\n{log_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"freshrag up not ready in {ready_timeout} s:\n{log_tail(log)}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield UpServer(url, proc.pid, proc, topic, workdir, time.monotonic() - started, log)
    finally:
        stop_process(proc)
        delete_topics(bootstrap, topic, f"{topic}.dlq")
        shutil.rmtree(workdir, ignore_errors=True)


# --- producing and polling ---------------------------------------------------------------------


@dataclass
class Probe:
    doc_id: str
    marker: str
    produced_at: float  # time.time() just before produce()
    acked_at: float | None = None
    last_miss_sent: float | None = None  # send time of the last search that did not show it
    seen_at: float | None = None  # response time of the first search that showed it
    timed_out: bool = False

    @property
    def latency_ms(self) -> float | None:
        return None if self.seen_at is None else (self.seen_at - self.produced_at) * 1000


@dataclass
class Tracker:
    """Produced documents and the one poller thread that looks for them in /v1/search."""

    url: str
    visible_timeout_s: float = 30.0
    poll_interval_s: float = 0.05
    probes: list[Probe] = field(default_factory=list)
    cycle_s: list[float] = field(default_factory=list)
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _outstanding: dict[str, Probe] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def add(self, probe: Probe) -> None:
        with self._lock:
            self.probes.append(probe)
            self._outstanding[probe.doc_id] = probe

    def outstanding(self) -> int:
        with self._lock:
            return len(self._outstanding)

    def start(self) -> Tracker:
        self._thread = threading.Thread(target=self._run, name="freshness-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wait_drained(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.outstanding() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _run(self) -> None:
        http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
        )
        try:
            while not self._stop.is_set():
                started = time.time()
                with self._lock:
                    for p in list(self._outstanding.values()):
                        if started - p.produced_at > self.visible_timeout_s:
                            p.timed_out = True
                            del self._outstanding[p.doc_id]
                    todo = list(self._outstanding.values())
                for i in range(0, len(todo), MAX_IDS_PER_SEARCH):
                    self._search(http, todo[i : i + MAX_IDS_PER_SEARCH])
                if todo:
                    self.cycle_s.append(time.time() - started)
                self._stop.wait(self.poll_interval_s)
        finally:
            http.close()

    def _search(self, http: httpx.Client, group: list[Probe]) -> None:
        body = {
            "query": " ".join(p.marker for p in group),
            "mode": "bm25",
            "top_k": len(group),
            "dedupe": True,
            "filters": {"doc_ids": [p.doc_id for p in group]},
        }
        sent = time.time()
        try:
            response = http.post("/v1/search", json=body)
            received = time.time()
            self.requests += 1
            if response.status_code != 200:
                self.errors.append(f"{response.status_code}: {response.text[:200]}")
                return
            found = {hit["doc_id"] for hit in response.json()["hits"]}
        except httpx.HTTPError as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            for p in group:
                if p.doc_id in found:
                    if p.seen_at is None:
                        p.seen_at = received
                    self._outstanding.pop(p.doc_id, None)
                else:
                    p.last_miss_sent = sent


class PacedProducer:
    """Kafka producer for probe documents: no linger, so produce() is when the event leaves."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 0,
                "message.max.bytes": 10_000_000,
            }
        )
        self.failed: list[str] = []
        self.sent = 0  # events produced to this topic, for `caught_up`

    def send(self, tracker: Tracker, doc_id: str, marker: str, event: Mapping[str, Any]) -> Probe:
        payload = json.dumps(event).encode()
        probe = Probe(doc_id, marker, time.time())

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                self.failed.append(str(err))
            else:
                probe.acked_at = time.time()

        tracker.add(probe)
        self.producer.produce(self.topic, key=doc_id.encode(), value=payload, on_delivery=delivered)
        self.producer.poll(0)
        self.sent += 1
        return probe

    def send_untracked(self, doc_id: str, event: Mapping[str, Any]) -> None:
        self.producer.produce(self.topic, key=doc_id.encode(), value=json.dumps(event).encode())
        self.producer.poll(0)
        self.sent += 1

    def paced(
        self, tracker: Tracker, docs: DocFactory, rate: float, duration_s: float, size: int
    ) -> list[Probe]:
        """`rate` documents a second for `duration_s` on a fixed schedule (no catch-up bursts
        beyond the schedule)."""
        count = max(1, round(rate * duration_s))
        start = time.monotonic()
        out: list[Probe] = []
        for i in range(count):
            due = start + i / rate
            while (wait := due - time.monotonic()) > 0:
                self.producer.poll(min(wait, 0.01))
            out.append(self.send(tracker, *docs.make(size)))
        self.flush()
        return out

    def flush(self) -> None:
        remaining = self.producer.flush(60)
        if remaining:
            self.failed.append(f"{remaining} not acknowledged within 60 s")


# --- figures -----------------------------------------------------------------------------------


def latency_summary(probes: Sequence[Probe]) -> dict[str, Any]:
    """Percentiles `pNN_ms` over the visible events; `pNN_ms_all` over all produced, an event
    never seen counting as infinitely late (None when the percentile falls on one)."""
    lat = [p.latency_ms for p in probes if p.latency_ms is not None]
    every = [p.latency_ms if p.latency_ms is not None else float("inf") for p in probes]
    unc = [
        (p.seen_at - p.last_miss_sent) * 1000
        for p in probes
        if p.seen_at is not None and p.last_miss_sent is not None
    ]
    ack = [(p.acked_at - p.produced_at) * 1000 for p in probes if p.acked_at is not None]

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {
        "produced": len(probes),
        "visible": len(lat),
        "not_visible": sum(1 for p in probes if p.seen_at is None),
        "p50_ms": r(percentile(lat, 50)),
        "p95_ms": r(percentile(lat, 95)),
        "p99_ms": r(percentile(lat, 99)),
        "max_ms": r(max(lat) if lat else None),
        "p50_ms_all": _finite(percentile(every, 50)),
        "p99_ms_all": _finite(percentile(every, 99)),
        "min_ms": r(min(lat) if lat else None),
        "mean_ms": r(sum(lat) / len(lat) if lat else None),
        "poll_resolution_ms_p50": r(percentile(unc, 50)),
        "poll_resolution_ms_max": r(max(unc) if unc else None),
        "produce_ack_ms_p50": r(percentile(ack, 50)),
    }


def _finite(value: float | None) -> float | None:
    return None if value is None or value == float("inf") else round(value, 1)


def histogram_delta(
    before: Mapping[str, float], after: Mapping[str, float], name: str = LAG_METRIC
) -> dict[str, Any]:
    """The server's histogram over a phase: count, mean and quantiles interpolated within
    buckets (so only as fine as the buckets: 50, 100, 250, 500 ms, 1 s, 2 s...)."""
    buckets: list[tuple[float, float]] = []
    prefix = f"{name}_bucket{{le="
    for key, value in after.items():
        if key.startswith(prefix):
            le = key[len(prefix) : -1]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets.append((bound, value - before.get(key, 0.0)))
    buckets.sort()
    count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
    total_s = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)

    def quantile(q: float) -> float | None:
        if count <= 0:
            return None
        rank, lower, prev = q * count, 0.0, 0.0
        for bound, cum in buckets:
            if cum >= rank:
                if bound == float("inf"):
                    return round(lower * 1000, 1)
                share = (rank - prev) / (cum - prev) if cum > prev else 1.0
                return round((lower + share * (bound - lower)) * 1000, 1)
            lower, prev = bound, cum
        return None

    return {
        "count": int(count),
        "mean_ms": round(1000 * total_s / count, 1) if count else None,
        "p50_ms": quantile(0.5),
        "p95_ms": quantile(0.95),
        "p99_ms": quantile(0.99),
    }


# --- phases ------------------------------------------------------------------------------------


def warm_up(server: UpServer, producer: PacedProducer, tracker: Tracker, docs: DocFactory) -> None:
    """A few documents first, so the first batch's one-off costs are not measured."""
    for _ in range(3):
        producer.send(tracker, *docs.make(500))
    producer.flush()
    tracker.wait_drained(120)


def rate_phase(
    server: UpServer,
    producer: PacedProducer,
    tracker: Tracker,
    docs: DocFactory,
    rate: float,
    duration_s: float,
    size: int,
) -> dict[str, Any]:
    backlog_s = caught_up(server, producer)
    http = httpx.Client(timeout=5)
    try:
        before = server.metrics(http)
        cycles_before = len(tracker.cycle_s)
        wall_started = time.time()
        started = time.monotonic()
        probes = producer.paced(tracker, docs, rate, duration_s, size)
        produce_s = time.monotonic() - started
        tracker.wait_drained(tracker.visible_timeout_s + 5)
        # events not seen within the timeout may still be queued: the flow's own lag covers
        # them too, since it is read once the flow has an outcome for every event
        drain_s = caught_up(server, producer)
        time.sleep(0.3)  # the flow counts a write just after it is searchable
        after = server.metrics(http)
        api = api_freshness(server, http, time.time() - wall_started)
    finally:
        http.close()
    cycles = tracker.cycle_s[cycles_before:]
    return {
        "rate": rate,
        "duration_s": duration_s,
        "doc_bytes": size,
        "achieved_rate": round(len(probes) / max(produce_s, 1e-9), 2),
        **latency_summary(probes),
        "poll_cycle_ms_p50": round(1000 * (percentile(cycles, 50) or 0), 1),
        "server_lag": histogram_delta(before, after),
        "api_freshness": api,
        "backlog_before_s": backlog_s,
        "drain_after_s": drain_s,
        "load_average_1m": load_average(),
    }


def api_freshness(server: UpServer, http: httpx.Client, window_s: float) -> dict[str, Any]:
    """What `GET /v1/freshness` says about the phase: the API's own produce → searchable
    percentiles over the phase's writes (window_s: since the phase started; the flow had
    caught up before it), its consumer lag and newest-write age. In ms, like the rest."""
    try:
        r = http.get(
            f"{server.url}/v1/freshness",
            params={"window_s": round(max(window_s, 0.001), 3)},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    except httpx.HTTPError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if r.status_code != 200:
        return {"error": f"{r.status_code}: {r.text[:200]}"}
    body = r.json()
    lat = body.get("latency") or {}

    def ms(v: Any) -> float | None:
        return None if v is None else round(float(v) * 1000, 1)

    return {
        "count": lat.get("count"),
        "p50_ms": ms(lat.get("p50_s")),
        "p90_ms": ms(lat.get("p90_s")),
        "p99_ms": ms(lat.get("p99_s")),
        "max_ms": ms(lat.get("max_s")),
        "lag_records": body.get("lag_records"),
        "lag_ms": ms(body.get("lag_seconds")),
        "newest_age_ms": ms(body.get("newest_indexed_age_s")),
        "latency_source": body.get("latency_source"),
    }


def caught_up(server: UpServer, producer: PacedProducer, timeout_s: float = 900) -> float:
    """Wait until the flow has an outcome for every event produced to the server's topic (a
    rate above capacity leaves a backlog that would skew the next phase); the seconds waited."""
    started = time.monotonic()
    with httpx.Client(timeout=5) as http:
        while time.monotonic() - started < timeout_s:
            if outcomes(server.metrics(http)) >= producer.sent:
                break
            time.sleep(0.2)
    return round(time.monotonic() - started, 2)


def burst_phase(
    server: UpServer,
    producer: PacedProducer,
    tracker: Tracker,
    docs: DocFactory,
    count: int,
    size: int,
    timeout_s: float = 600,
) -> dict[str, Any]:
    """`count` documents at once: ingest capacity in docs/s (produce -> all have an outcome)."""
    caught_up(server, producer)
    http = httpx.Client(timeout=5)
    try:
        base = outcomes(server.metrics(http))
        started = time.monotonic()
        events = [docs.make(size) for _ in range(count)]
        for doc_id, _marker, event in events:
            producer.send_untracked(doc_id, event)
        producer.flush()
        deadline = started + timeout_s
        done = base
        while done < base + count and time.monotonic() < deadline:
            time.sleep(0.1)
            done = outcomes(server.metrics(http))
        elapsed = time.monotonic() - started
    finally:
        http.close()
    finished = int(done - base)
    return {
        "burst_docs": count,
        "burst_finished": finished,
        "burst_s": round(elapsed, 2),
        "docs_per_s": round(finished / max(elapsed, 1e-9), 2),
    }


def large_doc_phase(
    server: UpServer,
    producer: PacedProducer,
    tracker: Tracker,
    docs: DocFactory,
    large_bytes: int,
    small_bytes: int,
    repeats: int,
) -> dict[str, Any]:
    """Small documents alone, then `repeats` times a large document followed at once by a
    small one; latencies of both."""
    alone: list[Probe] = []
    for _ in range(3):
        alone.append(producer.send(tracker, *docs.make(small_bytes)))
        producer.flush()
        tracker.wait_drained(tracker.visible_timeout_s + 5)
    large: list[Probe] = []
    behind: list[Probe] = []
    with httpx.Client(timeout=5) as http:
        before = total(server.metrics(http), BACKGROUND_METRIC)
    for _ in range(repeats):
        large.append(producer.send(tracker, *docs.make(large_bytes)))
        behind.append(producer.send(tracker, *docs.make(small_bytes)))
        producer.flush()
        tracker.wait_drained(tracker.visible_timeout_s + 5)
    with httpx.Client(timeout=5) as http:
        after = server.metrics(http)
    return {
        # records the flow embedded in its large-document lane (absent before that lane)
        "background_records": int(total(after, BACKGROUND_METRIC) - before),
        "small_alone": latency_summary(alone),
        "large": latency_summary(large),
        "small_behind_large": latency_summary(behind),
        "small_behind_large_ms": [p.latency_ms and round(p.latency_ms, 1) for p in behind],
        "large_ms": [p.latency_ms and round(p.latency_ms, 1) for p in large],
    }


@contextmanager
def session(
    bootstrap: str,
    docs: DocFactory,
    *,
    env: Mapping[str, str] | None = None,
    snapshot_interval: float = DEFAULT_SNAPSHOT_S,
    visible_timeout_s: float,
    poll_interval_s: float,
) -> Iterator[tuple[UpServer, PacedProducer, Tracker]]:
    with up_server(bootstrap, env, snapshot_interval) as server:
        producer = PacedProducer(bootstrap, server.topic)
        tracker = Tracker(server.url, visible_timeout_s, poll_interval_s).start()
        try:
            warm_up(server, producer, tracker, docs)
            yield server, producer, tracker
        finally:
            tracker.stop()
            producer.flush()


def run(
    rates: Sequence[float] = (5, 20, 50),
    duration_s: float = 30,
    doc_bytes: int = 1000,
    *,
    levers: bool = True,
    lever_rate: float = 20,
    lever_duration_s: float | None = None,
    lever_grid: Sequence[tuple[str, str, dict[str, str], float]] = DEFAULT_LEVERS,
    burst_docs: int = 100,
    large_doc: bool = True,
    large_doc_bytes: int = 200_000,
    large_repeats: int = 2,
    large_doc_configs: Sequence[tuple[str, dict[str, str]]] = LARGE_DOC_CONFIGS,
    visible_timeout_s: float = 30,
    poll_interval_s: float = 0.05,
    corpus: Path = CORPUS,
    **_: Any,
) -> dict[str, Any]:
    """Freshness per rate (p50/p95/p99/max, not visible, server-side lag), the highest rate
    with p99 < 1 s, the levers at `lever_rate`, and a small update behind a large document."""
    started = time.monotonic()
    docs = DocFactory(corpus)
    opts = {"visible_timeout_s": visible_timeout_s, "poll_interval_s": poll_interval_s}
    result: dict[str, Any] = {
        "benchmark": "freshness",
        "settings": {
            "mode": "freshrag up (embedded: flow + API in one process), Qdrant Edge, 1 worker",
            "rates": list(rates),
            "duration_s": duration_s,
            "doc_bytes": doc_bytes,
            "topic_partitions": 4,
            "defaults": "FRESHRAG_EMBED_MAX_WAIT_MS=200, FRESHRAG_EMBED_BATCH_SIZE=64, "
            f"snapshot interval {DEFAULT_SNAPSHOT_S} s (freshrag up -s)",
            "visible_timeout_s": visible_timeout_s,
            "poll": f"one thread; per cycle one POST /v1/search per {MAX_IDS_PER_SEARCH} "
            "outstanding documents (mode bm25, query = their marker words, filters.doc_ids, "
            f"dedupe), then {int(poll_interval_s * 1000)} ms sleep; latency = response that "
            "first showed the document - just before produce() (an upper bound; "
            "poll_resolution_ms = distance to the lower bound)",
            "percentiles": "pNN_ms over the visible events; pNN_ms_all over every produced "
            "event, one never seen within visible_timeout_s counting as infinitely late (None "
            "when the percentile falls on one); max_rate_p99_under_1s needs every event visible",
            "api_freshness": "GET /v1/freshness?window_s=<since the phase started>: the API's "
            "own produce -> searchable percentiles over the phase's writes (exact under "
            "freshrag up), its consumer lag and newest-write age, read after the phase",
            "server_lag": f"{LAG_METRIC}: Kafka record timestamp -> written to the index "
            "(no search), over every event of the phase (read once the flow has an outcome for "
            "each, so late ones count too); quantiles interpolated within the histogram's buckets",
            "cpu_count": os.cpu_count(),
        },
    }
    with kafka_broker() as bootstrap:
        rows: list[dict[str, Any]] = []
        default_burst: dict[str, Any] | None = None
        with session(
            bootstrap, docs, visible_timeout_s=visible_timeout_s, poll_interval_s=poll_interval_s
        ) as (server, producer, tracker):
            result["startup_s"] = round(server.startup_s, 1)
            for rate in rates:
                rows.append(
                    rate_phase(server, producer, tracker, docs, rate, duration_s, doc_bytes)
                )
            if levers and burst_docs:
                default_burst = burst_phase(server, producer, tracker, docs, burst_docs, doc_bytes)
            result["peak_rss_mb"] = server.peak_rss_mb()
            result["poll_requests"] = tracker.requests
            result["poll_errors"] = tracker.errors[:5]
            result["produce_errors"] = producer.failed[:5]
        result["rates"] = rows
        holding = [r["rate"] for r in rows if r["p99_ms"] is not None and _holds(r)]
        result["max_rate_p99_under_1s"] = max(holding) if holding else None
        if levers:
            result["levers"] = _levers(
                bootstrap,
                docs,
                rows,
                default_burst,
                lever_grid,
                lever_rate,
                lever_duration_s or duration_s,
                doc_bytes,
                burst_docs,
                opts,
            )
        if large_doc:
            large: list[dict[str, Any]] = []
            # a large document takes long to embed: it gets a longer timeout than the probes
            for label, env in large_doc_configs:
                with session(
                    bootstrap,
                    docs,
                    env=env,
                    visible_timeout_s=max(visible_timeout_s, 300.0),
                    poll_interval_s=poll_interval_s,
                ) as (server, producer, tracker):
                    large.append(
                        {
                            "config": label,
                            "env": env,
                            "large_doc_bytes": large_doc_bytes,
                            "small_doc_bytes": doc_bytes,
                            **large_doc_phase(
                                server,
                                producer,
                                tracker,
                                docs,
                                large_doc_bytes,
                                doc_bytes,
                                large_repeats,
                            ),
                        }
                    )
            result["small_behind_large"] = large
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def _holds(row: Mapping[str, Any]) -> bool:
    """p99 < 1 s with every event visible (an event never seen is worse than any p99)."""
    return bool(row["not_visible"] == 0 and row["p99_ms"] < TARGET_P99_MS)


def _levers(
    bootstrap: str,
    docs: DocFactory,
    rate_rows: Sequence[Mapping[str, Any]],
    default_burst: Mapping[str, Any] | None,
    grid: Sequence[tuple[str, str, dict[str, str], float]],
    rate: float,
    duration_s: float,
    size: int,
    burst_docs: int,
    opts: Mapping[str, float],
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for lever, value, env, snapshot in grid:
        reuse = next(
            (r for r in rate_rows if r["rate"] == rate and r["duration_s"] == duration_s), None
        )
        if lever == "default" and reuse is not None:
            row: dict[str, Any] = {**reuse, **(default_burst or {}), "reused": "rates phase"}
        else:
            with session(
                bootstrap,
                docs,
                env=env,
                snapshot_interval=snapshot,
                visible_timeout_s=opts["visible_timeout_s"],
                poll_interval_s=opts["poll_interval_s"],
            ) as (server, producer, tracker):
                row = rate_phase(server, producer, tracker, docs, rate, duration_s, size)
                if burst_docs:
                    row.update(burst_phase(server, producer, tracker, docs, burst_docs, size))
        out.append({"lever": lever, "value": value, "env": env, "snapshot_s": snapshot, **row})
    return out


# --- output ------------------------------------------------------------------------------------


def print_tables(result: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()

    def ms(v: Any) -> str:
        return "-" if v is None else f"{v:,.0f}"

    t = Table(title=f"freshness: produce -> visible in /v1/search ({result['settings']['mode']})")
    columns = ("rate", "p50", "p95", "p99", "max", "not visible", "server p50/p99", "API p50/p99")
    for col in (*columns, "poll res."):
        t.add_column(col, justify="right")
    for r in result["rates"]:
        t.add_row(
            f"{r['rate']:g} docs/s ({r['achieved_rate']:g})",
            ms(r["p50_ms"]),
            ms(r["p95_ms"]),
            ms(r["p99_ms"]),
            ms(r["max_ms"]),
            f"{r['not_visible']}/{r['produced']}",
            f"{ms(r['server_lag']['p50_ms'])} / {ms(r['server_lag']['p99_ms'])}",
            _api_cell(r.get("api_freshness") or {}),
            ms(r["poll_resolution_ms_p50"]),
        )
    console.print(t)
    console.print(f"highest rate with p99 < 1 s: {result['max_rate_p99_under_1s']} docs/s")
    if result.get("levers"):
        t = Table(title="freshness levers (at the lever rate), and ingest capacity")
        for col in ("lever", "value", "p50", "p99", "not visible", "burst docs/s"):
            t.add_column(col, justify="right")
        for r in result["levers"]:
            t.add_row(
                r["lever"],
                r["value"],
                ms(r["p50_ms"]),
                ms(r["p99_ms"]),
                f"{r['not_visible']}/{r['produced']}",
                str(r.get("docs_per_s", "-")),
            )
        console.print(t)
    for r in result.get("small_behind_large", []):
        console.print(
            f"{r['config']}: small alone p50 {ms(r['small_alone']['p50_ms'])} ms; "
            f"{r['large_doc_bytes']:,} B document {r['large_ms']} ms, the small one behind it "
            f"{r['small_behind_large_ms']} ms"
        )
    console.print(
        f"start-up {result.get('startup_s')} s, peak RSS {result.get('peak_rss_mb')} MB, "
        f"wall {result['wall_s']} s"
    )


def _api_cell(api: Mapping[str, Any]) -> str:
    """GET /v1/freshness's p50 / p99 over the phase (its own measure, no polling)."""
    if api.get("error") or api.get("p50_ms") is None:
        return "-"
    return f"{api['p50_ms']:,.0f} / {api['p99_ms']:,.0f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[5, 20, 50])
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--doc-bytes", type=int, default=1000)
    parser.add_argument("--levers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--large-doc", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--large-doc-bytes", type=int, default=200_000)
    parser.add_argument("--burst-docs", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = run(
        rates=args.rates,
        duration_s=args.duration,
        doc_bytes=args.doc_bytes,
        levers=args.levers,
        large_doc=args.large_doc,
        large_doc_bytes=args.large_doc_bytes,
        burst_docs=args.burst_docs,
    )
    print_tables(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
