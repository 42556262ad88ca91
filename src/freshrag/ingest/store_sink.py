"""The index sink: applies IndexWrites to a Store, idempotently and in version order.

Upserts write chunks under deterministic IDs, then delete the document's older versions; deletes
remove every point up to their version. Both are conditioned on versions, so replays are safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from freshrag.ingest.indexing import IndexWrite, WriteDelete, WriteUpsert
from freshrag.ingest.metrics import IngestMetrics
from freshrag.retrieve.contract import Store

WriteListener = Callable[[list[IndexWrite]], None]


def apply_writes(store: Store, writes: list[IndexWrite]) -> None:
    """Apply writes in order, batching upserts of distinct documents into one store call."""
    group: list[IndexWrite] = []
    keys: set[str] = set()
    for write in writes:
        key = write.event.doc_key
        if key in keys:
            _flush(store, group)
            group, keys = [], set()
        group.append(write)
        keys.add(key)
    _flush(store, group)


def _flush(store: Store, group: list[IndexWrite]) -> None:
    points = [p for w in group if isinstance(w, WriteUpsert) for p in w.points]
    if points:
        store.upsert_chunks(points)
    for w in group:
        if isinstance(w, WriteUpsert):
            store.delete_versions_below(w.event.tenant, w.event.doc_id, w.event.version)
        elif isinstance(w, WriteDelete):
            store.delete_document(w.event.tenant, w.event.doc_id, up_to_version=w.event.version)


class _StorePartition(StatelessSinkPartition[IndexWrite]):
    def __init__(
        self, store: Store, metrics: IngestMetrics, listener: WriteListener | None
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._listener = listener

    def write_batch(self, items: list[IndexWrite]) -> None:
        apply_writes(self._store, items)
        now = time.time()
        for w in items:
            op = "upsert" if isinstance(w, WriteUpsert) else "delete"
            self._metrics.events.labels(op, "applied").inc()
            self._metrics.freshness_lag.observe(max(0.0, now - w.event.origin.timestamp_ms / 1000))
            if isinstance(w, WriteUpsert):
                self._metrics.chunks_written.inc(len(w.points))
        if self._listener is not None:  # after the write: watermarks may now advance
            self._listener(items)

    def close(self) -> None:
        """The store is owned by whoever built the flow; it closes it."""


class StoreSink(DynamicSink[IndexWrite]):
    def __init__(
        self, store: Store, metrics: IngestMetrics, listener: WriteListener | None = None
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._listener = listener

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        return _StorePartition(self._store, self._metrics, self._listener)
