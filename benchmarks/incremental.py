"""Changes that cost only what changed: chunks re-embedded and time per kind of change, each next
to a full re-embed in the same run, and the freshness of an `acl` revocation.

    .venv/bin/python -m benchmarks.incremental [--edits 20] [--revocations 50] [--no-kafka]

Costs (no Kafka): the real model, an Edge shard in a temp dir, and the ingest's own indexer and
writer (`DocumentIndexer` with the store's layout and vector lookups, `IndexWriter`), on a
manual of about 40 chunks at the default 200 tokens. Each change is a new version of it:
- a one-sentence edit at a random place (`edits` of them, one after the other);
- a metadata-only change, and an `acl`-only change;
- the full re-embed it is compared with: the same edited version written to an empty shard.
Time is process + write of the one event (chunking, lookups, embedding, store calls).

Revocation freshness (real Kafka, the real flow in-process on Edge, as `freshrag up`):
`revocations` documents readable by `user:bob` are indexed first; then, one at a time, each gets
a new version whose `acl` drops him; the time from just before `produce()` until a dense query
filtered on bob's principals no longer returns it (polled every 5 ms on the store, as the
in-process API reads it).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

WORDS = "valve pump seal rotor gauge pressure flow coolant torque bolt filter tank".split()


def manual(sections: int = 10, seed: int = 7) -> str:
    """A manual of `sections` headed parts, four paragraphs each: about 40 chunks."""
    rng = random.Random(seed)
    out = []
    for s in range(sections):
        out.append(f"## Part {s}")
        for p in range(4):
            out.append(
                " ".join(
                    f"Step {s}.{p}.{i}: check the {rng.choice(WORDS)} of line {s}{p}{i} before "
                    f"the {rng.choice(WORDS)} test."
                    for i in range(9)
                )
            )
    return "\n\n".join(out)


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def costs(edits: int = 20, seed: int = 11) -> dict[str, Any]:
    from freshrag.core.embedder import Embedder
    from freshrag.core.settings import load_settings
    from freshrag.core.sparse import Bm25Encoder
    from freshrag.ingest.events import RecordOrigin, Upsert
    from freshrag.ingest.index_writer import IndexWriter
    from freshrag.ingest.indexing import ChunkingConfig, DocumentIndexer
    from freshrag.retrieve.edge_store import EdgeStore
    from freshrag.retrieve.generations import manifest_for

    settings = load_settings()
    embedder = Embedder.from_settings(settings)
    bm25 = Bm25Encoder()
    fingerprint = manifest_for(settings, embedder.dimension).fingerprint
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="freshrag-incr-") as tmp:
        live = EdgeStore(Path(tmp), "live")
        scratch = EdgeStore(Path(tmp), "scratch")

        def indexer_for(store: Any) -> tuple[DocumentIndexer, IndexWriter]:
            writer = IndexWriter(store)
            return (
                DocumentIndexer(
                    embedder,
                    bm25,
                    ChunkingConfig(settings.chunk_tokens, settings.chunk_overlap),
                    layouts=store.chunk_layouts,
                    vectors=store.chunk_vectors,
                    fingerprint=fingerprint,
                ),
                writer,
            )

        live_indexer, live_writer = indexer_for(live)
        offsets = iter(range(1, 10_000))

        def event(version: int, text: str, **changes: Any) -> Upsert:
            origin = RecordOrigin("documents", 0, next(offsets), 0)
            base = Upsert("t", "manual", version, "Pump manual", text, datetime.now(UTC), origin)
            return replace(base, **changes)

        def apply(indexer: DocumentIndexer, writer: IndexWriter, e: Upsert) -> dict[str, Any]:
            started = time.perf_counter()
            result = indexer.process([e])
            outcome = writer.apply(result.writes)
            assert not outcome.dead_letters and not result.dead_letters
            return {
                "embedded": result.chunks_embedded,
                "reused": result.chunks_reused,
                "patched": result.patched,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            }

        text = manual()
        first = apply(live_indexer, live_writer, event(1, text))
        chunks = live.count()
        sentences = [m for m in text.split(". ") if "Step" in m]
        edit_rows = []
        full_rows = []
        version = 1
        for n in range(edits):
            victim = rng.choice(sentences)
            text = text.replace(victim, victim + f" and recheck it ({n})", 1)
            version += 1
            edit_rows.append(apply(live_indexer, live_writer, event(version, text)))
            scratch_indexer, scratch_writer = indexer_for(scratch)
            scratch.delete_document("t", "manual")
            full_rows.append(apply(scratch_indexer, scratch_writer, event(version, text)))
        version += 1
        meta = apply(
            live_indexer, live_writer, event(version, text, metadata={"team": "ops"}, url="u")
        )
        version += 1
        acl_change = apply(
            live_indexer,
            live_writer,
            event(version, text, metadata={"team": "ops"}, url="u", acl=("user:alice",)),
        )
        live.close()
        scratch.close()

    embedded = [r["embedded"] for r in edit_rows]
    return {
        "document_chunks": chunks,
        "first_write": first,
        "sentence_edit": {
            "edits": edits,
            "chunks_reembedded_mean": round(statistics.mean(embedded), 2),
            "chunks_reembedded_max": max(embedded),
            "within_3": sum(1 for e in embedded if e <= 3),
            "ms_median": statistics.median(r["ms"] for r in edit_rows),
        },
        "full_reembed": {
            "chunks": statistics.median(r["embedded"] for r in full_rows),
            "ms_median": statistics.median(r["ms"] for r in full_rows),
        },
        "metadata_only": meta,
        "acl_only": acl_change,
    }


def revocation_freshness(bootstrap: str, revocations: int = 50) -> dict[str, Any]:
    """Produce -> a revoked principal no longer sees the document (embedded mode)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from freshrag.core.embedder import Embedder
    from freshrag.core.settings import load_settings
    from freshrag.core.sparse import Bm25Encoder
    from freshrag.ingest.events import encode_event, upsert_event
    from freshrag.ingest.flow import FlowParts, build_flow
    from freshrag.ingest.metrics import IngestMetrics
    from freshrag.ingest.runner import FlowThread, IngestOptions
    from freshrag.retrieve.contract import SearchFilter
    from freshrag.retrieve.edge_store import EdgeStore

    topic = f"bench-acl-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result(30)
    settings = load_settings(
        kafka_bootstrap=bootstrap, topic=topic, dlq_topic=f"{topic}.dlq", embed_max_wait_ms=20
    )
    embedder = Embedder.from_settings(settings)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="freshrag-acl-") as tmp:
        store = EdgeStore(Path(tmp), "acl")
        store.ensure_collection()
        stop = threading.Event()
        parts = FlowParts(settings, store, embedder, Bm25Encoder(), IngestMetrics(), stop)
        flow = FlowThread(build_flow(parts), IngestOptions(recovery_dir=None), stop)
        flow.start()
        bob = SearchFilter("t", principals=("*", "user:bob"))  # type: ignore[call-arg]
        query = embedder.embed_query("check the pump before the pressure test")

        def send(doc: str, version: int, users: list[str]) -> None:
            event = upsert_event(
                doc, manual(2, seed=int(doc[1:])), tenant="t", version=version, title=doc,
                acl={"users": users},
            )  # fmt: skip
            key, value = encode_event(event)
            producer.produce(topic, key=key, value=value)
            producer.flush(10)

        def visible(doc: str) -> bool:
            flt = replace(bob, doc_ids=[doc])
            return bool(store.query_dense(query, flt, 1))

        def wait(check: Callable[[], bool], timeout: float = 60) -> None:
            deadline = time.monotonic() + timeout
            while not check():
                if time.monotonic() > deadline:
                    raise TimeoutError("not visible in time")
                time.sleep(0.005)

        try:
            docs = [f"d{i}" for i in range(revocations)]
            for doc in docs:  # the documents exist, readable by bob, before any revocation
                send(doc, 1, ["alice", "bob"])
            for doc in docs:
                wait(lambda doc=doc: visible(doc), timeout=600)  # type: ignore[misc]
            time.sleep(1.0)
            for doc in docs:
                started = time.perf_counter()
                send(doc, 2, ["alice"])
                wait(lambda doc=doc: not visible(doc))  # type: ignore[misc]
                latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.1)  # revocations arrive one at a time, not as a burst
            patches = parts.metrics.registry.get_sample_value(
                "freshrag_ingest_payload_patches_total"
            )
            if patches != len(docs):  # each revocation must be a patch, or this measures embeds
                raise RuntimeError(f"{patches} payload patches for {len(docs)} revocations")
        finally:
            flow.stop()
            store.close()
            admin.delete_topics([topic, f"{topic}.dlq"])
    return {
        "revocations": len(latencies),
        "payload_patches": len(latencies),
        "p50_ms": round(_percentile(latencies, 50), 1),
        "p99_ms": round(_percentile(latencies, 99), 1),
        "max_ms": round(max(latencies), 1),
    }


def run(edits: int = 20, revocations: int = 50, bootstrap: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"costs": costs(edits)}
    if bootstrap:
        out["acl_revocation"] = revocation_freshness(bootstrap, revocations)
    return out


def main(argv: list[str] | None = None) -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--revocations", type=int, default=50)
    ap.add_argument("--no-kafka", action="store_true")
    args = ap.parse_args(argv)
    bootstrap = None if args.no_kafka else os.environ.get("FRESHRAG_KAFKA_BOOTSTRAP")
    print(json.dumps(run(args.edits, args.revocations, bootstrap), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """Positive figures only (the chunk counts of patches are 0 by design: in the table)."""
    c = result.get("costs", {})
    edit, full = c.get("sentence_edit", {}), c.get("full_reembed", {})
    out: dict[str, Any] = {
        "edit chunks re-embedded (mean)": edit.get("chunks_reembedded_mean"),
        "edit ms": edit.get("ms_median"),
        "full re-embed ms": full.get("ms_median"),
        "metadata patch ms": c.get("metadata_only", {}).get("ms"),
        "acl patch ms": c.get("acl_only", {}).get("ms"),
    }
    if edit.get("ms_median") and full.get("ms_median"):
        out["full ÷ edit time"] = round(full["ms_median"] / edit["ms_median"], 1)
    rev = result.get("acl_revocation")
    if rev:
        out["acl revocation p50 ms"] = rev.get("p50_ms")
        out["acl revocation p99 ms"] = rev.get("p99_ms")
    return out


def markdown(result: dict[str, Any]) -> str:
    c = result.get("costs", {})
    edit, full = c.get("sentence_edit", {}), c.get("full_reembed", {})
    meta, acl = c.get("metadata_only", {}), c.get("acl_only", {})
    n = c.get("document_chunks", "?")
    rows = [
        ("one-sentence edit", f"{edit.get('chunks_reembedded_mean')} (max "
         f"{edit.get('chunks_reembedded_max')}, ≤ 3 in {edit.get('within_3')}/"
         f"{edit.get('edits')})", edit.get("ms_median")),
        ("full re-embed of the same version", full.get("chunks"), full.get("ms_median")),
        ("metadata-only change", meta.get("embedded"), meta.get("ms")),
        ("`acl`-only change", acl.get("embedded"), acl.get("ms")),
    ]  # fmt: skip
    lines = [
        f"A manual of {n} chunks (200 tokens), the real model, an Edge shard.",
        "",
        "| change | chunks embedded | ms (median) |",
        "|---|---|---|",
        *[f"| {a} | {b} | {t} |" for a, b, t in rows],
    ]
    rev = result.get("acl_revocation")
    if rev:
        lines += [
            "",
            f"`acl` revocation, produce → no longer visible to the revoked principal "
            f"({rev['revocations']} revocations, embedded mode): p50 {rev['p50_ms']} ms, "
            f"p99 {rev['p99_ms']} ms, max {rev['max_ms']} ms.",
        ]
    return "\n".join(lines)
