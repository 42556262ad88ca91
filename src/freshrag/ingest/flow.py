"""The one place that wires the ingest dataflow together.

Kafka ─► parse ─► version gate (per source key, recoverable) ─► collect (size / max wait)
      ─► chunk + embed (batched across documents) ─► write index (upsert + stale cleanup)
bad records at any step (parse, chunk, embed, index) ─► DLQ topic with reason headers
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSink, KafkaSinkMessage, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import StatefulLogic

from freshrag.core.settings import Settings
from freshrag.ingest.events import (
    ChangeEvent,
    DeadLetter,
    DebeziumMapping,
    Delete,
    EventLimits,
    RecordOrigin,
    parse_record,
)
from freshrag.ingest.index_writer import IndexWriter
from freshrag.ingest.indexing import (
    ChunkingConfig,
    DenseEmbedder,
    DocumentIndexer,
    IndexWrite,
    SparseEmbedder,
    WriteUpsert,
)
from freshrag.ingest.kafka_io import (
    StoppableKafkaSource,
    consume_error_to_dead_letter,
    dead_letter_message,
    dlq_producer_config,
    to_raw_record,
)
from freshrag.ingest.metrics import IngestMetrics
from freshrag.ingest.ordering import Applied, gate, next_expiry_ms, prune
from freshrag.ingest.watermarks import WatermarkTracker
from freshrag.retrieve.contract import Store

Bytes = bytes | None
WriteListener = Callable[[list[IndexWrite]], None]
EMBED_BUCKETS = 4  # collect() keys: spread batches over workers, keep one doc in one bucket


@dataclass
class FlowParts:
    """What a flow needs from outside; built by the CLI or `freshrag up`, never at import."""

    settings: Settings
    store: Store
    dense: DenseEmbedder
    sparse: SparseEmbedder
    metrics: IngestMetrics
    stop: threading.Event
    mapping: DebeziumMapping = field(default_factory=DebeziumMapping)
    listener: WriteListener | None = None
    watermarks: WatermarkTracker = field(default_factory=WatermarkTracker)


def _bucket(event: ChangeEvent) -> str:
    """By source key, so every event of a document id (any tenant) stays in order."""
    return str(zlib.crc32(event.doc_id.encode()) % EMBED_BUCKETS)


def build_flow(parts: FlowParts, flow_id: str = "freshrag-ingest") -> Dataflow:
    s = parts.settings
    metrics = parts.metrics
    limits = EventLimits(max_document_bytes=s.max_document_bytes)
    writer = IndexWriter(
        parts.store,
        retry_budget_s=s.store_retry_budget_s,
        on_retry=lambda _exc: metrics.store_retries.inc(),
    )

    def layouts(tenant: str | None, doc_ids: Sequence[str]) -> Any:
        return writer.read(lambda: parts.store.chunk_layouts(tenant, doc_ids))

    indexer = DocumentIndexer(
        parts.dense,
        parts.sparse,
        ChunkingConfig(max_tokens=s.chunk_tokens, overlap=s.chunk_overlap),
        layouts=layouts,
    )
    brokers = s.kafka_bootstrap.split(",")
    tracker = parts.watermarks

    def on_read(topic: str, partition: int, next_offset: int, offsets: list[int]) -> None:
        metrics.on_read(topic, partition, next_offset, offsets)
        tracker.read(partition, offsets, next_offset)

    def final(*origins: RecordOrigin) -> None:
        tracker.done_many((o.partition, o.offset) for o in origins)

    def written(writes: list[IndexWrite]) -> None:
        if parts.listener is not None:
            parts.listener(writes)

    flow = Dataflow(flow_id)
    source = StoppableKafkaSource(
        brokers,
        [s.topic],
        parts.stop,
        batch_size=s.embed_batch_size * 4,
        on_read=on_read,
        on_lost=lambda topic, partition, n: metrics.offsets_lost.labels(topic, str(partition)).inc(
            n
        ),
    )
    raw = op.input("kafka_in", flow, source)
    consumed = op.branch("split_consume_errors", raw, lambda m: not hasattr(m, "err"))
    consume_errors = cast(Stream[KafkaError[Bytes, Bytes]], consumed.falses)
    messages = cast(Stream[KafkaSourceMessage[Bytes, Bytes]], consumed.trues)
    consume_dlq = op.map("consume_error", consume_errors, consume_error_to_dead_letter)

    def parse(message: KafkaSourceMessage[Bytes, Bytes]) -> ChangeEvent | DeadLetter:
        return parse_record(to_raw_record(message), limits, parts.mapping)

    parsed = op.map("parse", messages, parse)
    split = op.branch("split_parse_errors", parsed, lambda x: not isinstance(x, DeadLetter))
    events = cast(Stream[ChangeEvent], split.trues)
    parse_dlq = cast(Stream[DeadLetter], split.falses)

    # keyed by the source key (document id): a delete that names no tenant finds its tenant
    keyed = op.key_on("by_source_key", events, lambda e: e.doc_id)
    retention_ms = int(s.delete_retention_s * 1000)

    def on_stale(event: ChangeEvent) -> None:
        metrics.events.labels(_op(event), "stale").inc()
        final(event.origin)

    def build_gate(resume: dict[str, Applied] | None) -> VersionGateLogic:
        metrics.gate_documents.inc()  # a key enters the state; DISCARD takes it out
        return VersionGateLogic(resume, retention_ms, on_stale, metrics.gate_documents.dec)

    # one item per record: a record that becomes several events (a tenant move) stays whole,
    # so it is batched, counted and finalised once
    gated = op.stateful("source_key_gate", keyed, build_gate)
    rebucketed = op.key_on(
        "by_bucket", cast(Stream[Record], op.key_rm("unkey", gated)), lambda r: _bucket(r[0])
    )
    max_wait = timedelta(milliseconds=s.embed_max_wait_ms)

    def restored(records: list[Record]) -> None:
        """Records buffered at a crash come back from the snapshot, not from Kafka: they hold
        the watermark until written, so a consistency token never passes them early."""
        tracker.restore((e.origin.partition, e.origin.offset) for r in records for e in r)

    def build_batcher(resume: BufferState | None) -> BatchBufferLogic:
        return BatchBufferLogic(resume, max_wait, s.embed_batch_size, restored)

    batches = op.stateful("embed_batch_buffer", rebucketed, build_batcher)

    def process(keyed_batch: tuple[str, list[Record]]) -> list[DeadLetter]:
        """Chunk, embed and write one batch; returns what must go to the DLQ. Each record gets
        one outcome (dead_letter > applied > skipped_indexed > superseded) and is final here."""
        records = keyed_batch[1]
        result = indexer.process([e for record in records for e in record])
        if result.chunks_embedded:
            metrics.embed_batch_size.observe(result.chunks_embedded)
            metrics.embed_latency.observe(result.embed_seconds)
        outcome = writer.apply(result.writes)  # raises only when the store stays unavailable
        if outcome.applied:
            written(outcome.applied)
        seen: dict[tuple[int, int], tuple[int, ChangeEvent]] = {}

        def mark(event: ChangeEvent, rank: int) -> None:
            key = (event.origin.partition, event.origin.offset)
            if key not in seen or rank > seen[key][0]:
                seen[key] = (rank, event)

        for e in result.superseded:
            mark(e, 0)
        for e in result.skipped:
            mark(e, 1)
        for w in outcome.applied:
            if isinstance(w, WriteUpsert):
                metrics.chunks_written.inc(len(w.points))
            cleanup_only = isinstance(w, WriteUpsert) and not w.points
            mark(w.event, 1 if cleanup_only else 2)
        dead: dict[tuple[int, int], DeadLetter] = {}
        for d in [*result.dead_letters, *outcome.dead_letters]:
            key = (d.origin.partition, d.origin.offset)
            dead.setdefault(key, d)
            seen.pop(key, None)  # counted once, as a dead letter, in count_dead
        now = time.time()
        for rank, event in seen.values():
            metrics.events.labels(_op(event), _OUTCOMES[rank]).inc()
            if rank == 2:
                metrics.freshness_lag.observe(max(0.0, now - event.origin.timestamp_ms / 1000))
        final(*(e.origin for record in records for e in record))  # dead ones: sent just after
        return list(dead.values())

    process_dlq = cast(Stream[DeadLetter], op.flat_map("chunk_embed_write", batches, process))
    dead = cast(Stream[DeadLetter], op.merge("dead_letters", consume_dlq, parse_dlq, process_dlq))

    def count_dead(d: DeadLetter) -> DeadLetter:
        metrics.dead_letters.labels(d.error_class, d.step).inc()
        metrics.events.labels("unknown", "dead_letter").inc()
        final(d.origin)
        return d

    counted = op.map("count_dead", dead, count_dead)
    dlq_config = dlq_producer_config(s.dlq_max_message_bytes)

    def to_dlq_message(d: DeadLetter) -> KafkaSinkMessage[Bytes, Bytes]:
        return dead_letter_message(d, s.dlq_max_message_bytes)  # truncated to fit, never fails

    op.output(
        "dlq",
        op.map("to_dlq_message", counted, to_dlq_message),
        KafkaSink(brokers, s.dlq_topic, add_config=dlq_config),
    )
    return flow


class VersionGateLogic(op.StatefulLogic[ChangeEvent, list[ChangeEvent], dict[str, Applied]]):
    """bytewax state for one source key around the pure `ordering.gate`; it wakes up to forget
    deletes past their retention, so the state holds live documents (plus recent deletes)."""

    def __init__(
        self,
        state: dict[str, Applied] | None,
        retention_ms: int,
        on_stale: Callable[[ChangeEvent], None],
        on_discard: Callable[[], None],
    ) -> None:
        self.state = state
        self.retention_ms = retention_ms
        self.on_stale = on_stale
        self.on_discard = on_discard

    def _keep(self) -> bool:
        if self.state is None:
            self.on_discard()
            return StatefulLogic.DISCARD
        return StatefulLogic.RETAIN

    def on_item(self, value: ChangeEvent) -> tuple[list[list[ChangeEvent]], bool]:
        now = _now_ms()
        state, out = gate(prune(self.state, now, self.retention_ms), value, now)
        self.state = state
        if not out:
            self.on_stale(value)
        return ([out] if out else []), self._keep()

    def on_notify(self) -> tuple[list[list[ChangeEvent]], bool]:
        self.state = prune(self.state, _now_ms(), self.retention_ms)
        return [], self._keep()

    def on_eof(self) -> tuple[list[list[ChangeEvent]], bool]:
        return [], self._keep()

    def notify_at(self) -> datetime | None:
        due = next_expiry_ms(self.state, self.retention_ms)
        return None if due is None else datetime.fromtimestamp(due / 1000 + 0.001, tz=UTC)

    def snapshot(self) -> dict[str, Applied]:
        return dict(self.state or {})


Record = list[ChangeEvent]  # what one Kafka record became after the gate
BufferState = tuple[list[Record], float | None]  # (records, flush deadline in epoch seconds)


class BatchBufferLogic(op.StatefulLogic[Record, list[Record], BufferState]):
    """`op.collect` with a restore hook: a batch is emitted at `max_size` records or `max_wait`
    after its first one; its records are snapshotted with the offsets they came from."""

    def __init__(
        self,
        resume: BufferState | None,
        max_wait: timedelta,
        max_size: int,
        on_restore: Callable[[list[Record]], None],
    ) -> None:
        self.events, self.deadline = resume if resume is not None else ([], None)
        self.max_wait = max_wait
        self.max_size = max_size
        if self.events:
            on_restore(self.events)

    def _flush(self) -> tuple[list[list[Record]], bool]:
        batch, self.events, self.deadline = self.events, [], None
        return ([batch] if batch else []), StatefulLogic.DISCARD

    def on_item(self, value: Record) -> tuple[list[list[Record]], bool]:
        if not self.events:
            self.deadline = time.time() + self.max_wait.total_seconds()
        self.events.append(value)
        if len(self.events) >= self.max_size:
            return self._flush()
        return [], StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[list[Record]], bool]:
        return self._flush()

    def on_eof(self) -> tuple[list[list[Record]], bool]:
        return self._flush()

    def notify_at(self) -> datetime | None:
        if self.deadline is None:
            return None
        return datetime.fromtimestamp(self.deadline, tz=UTC)

    def snapshot(self) -> BufferState:
        return (list(self.events), self.deadline)


_OUTCOMES = ("superseded", "skipped_indexed", "applied")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _op(event: Any) -> str:
    return "delete" if isinstance(event, Delete) else "upsert"
