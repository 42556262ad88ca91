"""`freshrag reindex`: build a new index generation with this process's settings while the
current one keeps serving, then switch readers to it in one atomic step.

The new generation (`<collection>-g<fingerprint>`) is filled by the ordinary ingest dataflow,
reading the compacted topic from its beginning into its own recovery directory, so it applies
the same version rules as live ingest, stays current with live events while it builds, and a
crash resumes where the last snapshot was. When every partition's indexed watermark has reached
the topic's end (lag 0, or `max_lag`), an optional quality gate runs, then the serving pointer
moves. Rolling back is the same switch, to the previous generation (`freshrag index switch`).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from freshrag.core.embedder import Embedder
from freshrag.core.settings import Settings
from freshrag.core.sparse import Bm25Encoder
from freshrag.ingest.flow import FlowParts, build_flow
from freshrag.ingest.metrics import IngestMetrics
from freshrag.ingest.runner import (
    FlowThread,
    IngestConfigError,
    IngestOptions,
    open_index_writer,
    recovery_for,
)
from freshrag.retrieve.catalog import (
    BuildLock,
    BuildLockHeld,
    BuildLockLost,
    LockHolder,
    build_lock,
)
from freshrag.retrieve.contract import EVERYONE, ChunkPoint, SparseVector, Store, text_hash
from freshrag.retrieve.generations import IndexManifest, differences, generation_name, manifest_for
from freshrag.retrieve.stores import open_catalog

log = logging.getLogger("freshrag.reindex")
SOURCE_TOPIC = "topic"  # replayed from the compacted topic's beginning
SOURCE_PAYLOADS = "payloads"  # the serving generation's chunk texts, re-embedded
# Build settings a payload copy keeps: the chunks stay the same, only their vectors change.
SAME_CHUNKS_KEYS = ("chunk_tokens", "chunk_overlap", "chunker_version", "bm25_avg_len")
REEMBED_BATCH = 128


class ReindexError(RuntimeError):
    """The re-index cannot go on (exit code 1), or was refused by the quality gate (3)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ReindexOutcome:
    previous: str
    generation: str
    source: str
    switched: bool
    seconds: float
    points: int
    quality: dict[str, float] = field(default_factory=dict)
    note: str = ""
    resumed_at: int = 0  # records the generation had indexed when this run started


def lag(ends: Mapping[int, int], watermarks: Mapping[str, int]) -> int:
    """Records in the topic that the generation has not indexed yet."""
    return sum(max(0, end - watermarks.get(str(p), 0)) for p, end in ends.items())


def payload_source_reason(old: IndexManifest | None, new: IndexManifest) -> str | None:
    """None when the serving generation's stored chunks can be re-embedded as they are (only
    the model changed); else why the topic must be replayed instead."""
    if old is None:
        return "the serving generation has no manifest"
    changed = [k for k in SAME_CHUNKS_KEYS if old.build.get(k) != new.build.get(k)]
    if changed:
        return f"the chunks change ({', '.join(changed)})"
    return None


def chunk_point_from_payload(
    payload: Mapping[str, Any], dense: Sequence[float], sparse: SparseVector, chunk_hash: str
) -> ChunkPoint:
    """The stored point again, with new vectors and the chunk hash of the new build (every
    other payload field kept as it is)."""
    from freshrag.retrieve.ranking import parse_timestamp

    def when(key: str) -> datetime:
        parsed = parse_timestamp(payload.get(key))
        return parsed if parsed is not None else datetime.now(UTC)

    return ChunkPoint(
        tenant=str(payload["tenant"]),
        doc_id=str(payload["doc_id"]),
        version=int(payload["version"]),
        chunk_index=int(payload["chunk_index"]),
        chunk_count=int(payload["chunk_count"]),
        text=str(payload.get("text", "")),
        title=str(payload.get("title", "")),
        url=payload.get("url"),
        source=payload.get("source"),
        updated_at=when("updated_at"),
        indexed_at=when("indexed_at"),
        metadata=dict(payload.get("metadata") or {}),
        dense=list(dense),
        sparse=sparse,
        heading=str(payload.get("heading", "")),
        topic=str(payload.get("topic", "")),
        partition=int(payload.get("partition", -1)),
        offset=int(payload.get("offset", -1)),
        acl=_stored_acl(payload.get("acl")),
        chunk_hash=chunk_hash,
        content_hash=str(payload.get("content_hash") or ""),
    )


def _stored_acl(value: Any) -> tuple[str, ...] | None:
    """The `ChunkPoint.acl` that stores `value` again (absent or [EVERYONE]: None)."""
    if not isinstance(value, list) or value == [EVERYONE]:
        return None
    return tuple(str(v) for v in value)


def reembed_payloads(
    source: Store,
    target: Store,
    embedder: Any,
    bm25: Any,
    *,
    fingerprint: str,
    batch: int = REEMBED_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Copy every point of `source` into `target` with vectors from `embedder`: the exact text
    ingest embedded is rebuilt from the payload, so the result equals a replay of the topic."""
    from freshrag.ingest.chunking import stored_chunk_embedding_text

    payloads = source.scroll_payloads()
    done = 0
    for start in range(0, len(payloads), batch):
        page = payloads[start : start + batch]
        texts = [
            stored_chunk_embedding_text(
                str(p.get("title", "")), str(p.get("heading", "")), str(p.get("text", "")), embedder
            )
            for p in page
        ]
        dense = embedder.embed_documents(texts)
        sparse = bm25.embed_documents(texts)
        target.upsert_chunks(
            [
                chunk_point_from_payload(p, d, s, text_hash(fingerprint, t))
                for p, t, d, s in zip(page, texts, dense, sparse, strict=True)
            ]
        )
        done += len(page)
        if progress is not None:
            progress(done, len(payloads))
    return done


def gate_refusal(quality: Mapping[str, float]) -> str | None:
    """Why the gate refuses the switch (the new settings score lower), or None."""
    new, old = quality.get("new_ndcg_at_10"), quality.get("old_ndcg_at_10")
    if new is None or old is None or new >= old:
        return None
    return (
        f"quality gate: the new generation scores nDCG@10 {new:.4f} < {old:.4f} of the serving "
        "one; not switched (--force switches anyway)"
    )


def quality_gate(
    settings: Settings,
    golden: Path,
    old: IndexManifest | None,
    new: IndexManifest,
    new_embedder: Any,
    *,
    max_queries: int | None = None,
) -> dict[str, float]:
    """nDCG@10 (hybrid) of the old and the new build settings on a BEIR golden set, each on a
    scratch Edge index, so the serving generations are never touched."""
    from freshrag.evaluation.run import run_eval
    from freshrag.ingest.indexing import ChunkingConfig
    from freshrag.retrieve.edge_store import EdgeStore
    from freshrag.retrieve.search import HybridSearcher

    def score(manifest: IndexManifest, embedder: Any, name: str) -> float:
        chunking = ChunkingConfig(
            max_tokens=int(manifest.build["chunk_tokens"]),
            overlap=int(manifest.build["chunk_overlap"]),
        )
        with tempfile.TemporaryDirectory(prefix=f"freshrag-gate-{name}-") as tmp:
            store = EdgeStore(Path(tmp), "gate", dense_dim=int(manifest.build["dimension"]))
            try:
                searcher = HybridSearcher(store, embedder, Bm25Encoder())
                report = run_eval(
                    golden,
                    store,
                    searcher,
                    embedder,
                    chunking=chunking,
                    modes=("hybrid",),
                    max_queries=max_queries,
                )
            finally:
                store.close()
        return float(report.modes["hybrid"].ndcg_at_10)

    scores = {"new_ndcg_at_10": score(new, new_embedder, "new")}
    if old is not None:
        old_embedder = new_embedder
        if old.build.get("model") != new.build.get("model") or old.build.get(
            "precision"
        ) != new.build.get("precision"):
            old_embedder = Embedder.from_settings(settings.model_copy(update=old.settings_update()))
        scores["old_ndcg_at_10"] = score(old, old_embedder, "old")
    return scores


def run_reindex(
    settings: Settings,
    opts: IngestOptions,
    *,
    golden: Path | None = None,
    force: bool = False,
    follow: bool = False,
    switch: bool = True,
    max_lag: int = 0,
    timeout_s: float | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    end_offsets: Callable[[], Mapping[int, int]] | None = None,
    break_lock: bool = False,
) -> ReindexOutcome:
    """Build (or resume) the generation of `settings`, wait until it has caught up, gate it,
    switch readers to it; with `follow`, keep ingesting it until `stop` is set.

    The index's build lock (`retrieve.catalog`) is held from before anything is written until
    the end: a second run is refused (exit code 2) while the first lives; `break_lock` takes it
    anyway."""
    from freshrag.ingest.kafka_io import ensure_event_topics

    started = time.monotonic()
    stop = stop or threading.Event()
    embedder = Embedder.from_settings(settings)
    manifest = manifest_for(settings, int(embedder.dimension))
    catalog = open_catalog(settings)
    lock: BuildLock | None = None
    try:
        previous = catalog.serving()
        old = catalog.read_manifest(previous) if catalog.exists(previous) else None
        target = generation_name(settings.collection, manifest)
        if old is not None and not differences(old, manifest):
            raise ReindexError(
                f"the serving generation {previous!r} was built with these settings already; "
                "change the model or the chunking first (or switch with `freshrag index switch`)"
            )
        if follow and not settings.qdrant_url:
            raise ReindexError(
                "--follow needs Qdrant server: an embedded (Edge) generation is opened by one "
                "process, and after the switch `freshrag up` must open it to serve it. Restart "
                "`freshrag up` with the new settings to keep it current."
            )
        recovery = recovery_for(opts, settings, target).recovery_dir
        lock = build_lock(catalog, LockHolder.here(target, recovery))
        try:
            lock.acquire(break_lock=break_lock)
        except BuildLockHeld as exc:
            lock = None
            raise ReindexError(str(exc), exit_code=2) from None
        ensure_event_topics(settings, opts.topic_partitions)
        probe = None if end_offsets is not None else _EndOffsets(settings)
        ends_of = end_offsets or probe.ends  # type: ignore[union-attr]
        try:
            store, run_opts, name = open_index_writer(settings, embedder, opts, target)
        except IngestConfigError as exc:
            raise ReindexError(str(exc)) from None
        except RuntimeError as exc:
            if settings.qdrant_url:
                raise
            # Edge: the shard is open in another process (`freshrag up` with these settings)
            raise ReindexError(f"cannot open the generation {target}: {exc}", 2) from None
        resumed_at = sum(store.load_watermarks(settings.topic).values())
        source, note = _copy_payloads(settings, previous, old, manifest, store, embedder, progress)
        parts = FlowParts(
            settings, store, embedder, Bm25Encoder(), IngestMetrics(), stop, workers=opts.workers
        )
        flow = FlowThread(build_flow(parts), run_opts, stop)
        from freshrag.ingest.runner import WatermarkPublisher

        publisher = WatermarkPublisher(store, settings.topic, parts.watermarks.snapshot)
        log.info(
            "re-index: building %s from the topic %s (serving: %s)", name, settings.topic, previous
        )
        flow.start()
        publisher.start()
        switched = False
        quality: dict[str, float] = {}
        try:
            _wait_caught_up(parts, flow, ends_of, max_lag, stop, timeout_s, progress, lock.check)
            if golden is not None:
                quality = quality_gate(settings, golden, old, manifest, embedder)
                refusal = gate_refusal(quality)
                if refusal is not None and not force:
                    raise ReindexError(refusal, exit_code=3)
                if refusal is not None:
                    log.warning("%s; switching anyway (--force)", refusal)
                _wait_caught_up(
                    parts, flow, ends_of, max_lag, stop, timeout_s, progress, lock.check
                )
            if switch:
                lock.check(fresh=True)  # never switch when another run took over the build
                publisher.stop()  # readers see this generation's final watermarks first
                publisher = WatermarkPublisher(store, settings.topic, parts.watermarks.snapshot)
                publisher.start()
                catalog.switch(name)
                switched = True
                log.info("re-index: readers now use %s (was %s)", name, previous)
            if follow:
                while not stop.wait(0.5):
                    lock.check()
                    if not flow.alive():
                        raise ReindexError("the ingest dataflow of the new generation failed")
        finally:
            flow.stop()
            publisher.stop()
            points = store.count()
            store.close()
            if probe is not None:
                probe.close()
        return ReindexOutcome(
            previous=previous,
            generation=name,
            source=source,
            switched=switched,
            seconds=time.monotonic() - started,
            points=points,
            quality=quality,
            note=note,
            resumed_at=resumed_at,
        )
    except BuildLockLost as exc:
        raise ReindexError(str(exc), exit_code=2) from None
    finally:
        if lock is not None:
            lock.release()
        catalog.close()


def _copy_payloads(
    settings: Settings,
    previous: str,
    old: IndexManifest | None,
    new: IndexManifest,
    target: Store,
    embedder: Any,
    progress: Callable[[int, int], None] | None,
) -> tuple[str, str]:
    """Re-embed the serving generation's chunks when only the model changed and its store can
    be opened here (faster: no parsing or chunking, and no need for the topic's history); the
    topic replay that follows then only catches up (already-indexed versions are skipped).
    Returns (source, why)."""
    reason = payload_source_reason(old, new)
    if reason is None and target.count() > 0:
        reason = "the new generation is partly built already (resuming)"
    if reason is not None:
        return SOURCE_TOPIC, reason
    from freshrag.retrieve.stores import open_settings_store

    try:
        source = open_settings_store(settings, previous, dense_dim=int(old.build["dimension"]))  # type: ignore[union-attr]
    except Exception as exc:  # an Edge shard held by `freshrag up`, say
        return SOURCE_TOPIC, f"the serving generation cannot be opened here ({exc})"
    try:
        copied = reembed_payloads(
            source, target, embedder, Bm25Encoder(), fingerprint=new.fingerprint, progress=progress
        )
    finally:
        source.close()
    log.info("re-index: re-embedded %d stored chunks of %s", copied, previous)
    return SOURCE_PAYLOADS, f"only the model changed: {copied} stored chunks re-embedded"


def _wait_caught_up(
    parts: FlowParts,
    flow: Any,
    ends_of: Callable[[], Mapping[int, int]],
    max_lag: int,
    stop: threading.Event,
    timeout_s: float | None,
    progress: Callable[[int, int], None] | None,
    check: Callable[[], None] = lambda: None,
) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        check()  # BuildLockLost: another run took the build lock over
        if not flow.alive():
            raise ReindexError("the ingest dataflow of the new generation failed (see the log)")
        if stop.is_set():
            raise ReindexError(
                "stopped before the new generation caught up; run it again to resume"
            )
        ends = ends_of()
        marks = parts.watermarks.snapshot()
        behind = lag(ends, marks)
        total = sum(ends.values())
        if progress is not None:
            progress(total - behind, total)
        if behind <= max_lag:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise ReindexError(f"not caught up after {timeout_s:.0f} s ({behind} records behind)")
        time.sleep(0.5)


class _EndOffsets:
    """The topic's high watermarks (the offset each partition's next record gets)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Consumer

        self.topic = settings.topic
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.consumer_group}-reindex-probe",
                "enable.auto.commit": False,
            }
        )

    def ends(self) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        meta = self.consumer.list_topics(self.topic, timeout=10)
        partitions = meta.topics[self.topic].partitions
        return {
            p: int(
                self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
            )
            for p in partitions
        }

    def close(self) -> None:
        self.consumer.close()
