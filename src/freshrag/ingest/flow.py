"""The one place that wires the ingest dataflow together.

Kafka ─► parse ─► version gate (per doc, recoverable) ─► collect (size / max wait)
      ─► chunk + embed (batched across documents) ─► index sink (upsert + stale cleanup)
bad records at any step ─► DLQ topic with reason headers
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, cast

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSink, KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream

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
from freshrag.ingest.indexing import (
    ChunkingConfig,
    DenseEmbedder,
    DocumentIndexer,
    GateState,
    IndexWrite,
    SparseEmbedder,
    version_gate,
)
from freshrag.ingest.kafka_io import (
    StoppableKafkaSource,
    consume_error_to_dead_letter,
    dead_letter_message,
    to_raw_record,
)
from freshrag.ingest.metrics import IngestMetrics
from freshrag.ingest.store_sink import StoreSink, WriteListener
from freshrag.ingest.watermarks import WatermarkTracker
from freshrag.retrieve.contract import Store

Bytes = bytes | None
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
    return str(zlib.crc32(event.doc_key.encode()) % EMBED_BUCKETS)


def build_flow(parts: FlowParts, flow_id: str = "freshrag-ingest") -> Dataflow:
    s = parts.settings
    metrics = parts.metrics
    limits = EventLimits(max_document_bytes=s.max_document_bytes)
    indexer = DocumentIndexer(
        parts.dense,
        parts.sparse,
        ChunkingConfig(max_tokens=s.chunk_tokens, overlap=s.chunk_overlap),
        indexed_versions=parts.store.document_versions,
    )
    brokers = s.kafka_bootstrap.split(",")
    tracker = parts.watermarks

    def on_read(topic: str, partition: int, next_offset: int, offsets: list[int]) -> None:
        metrics.on_read(topic, partition, next_offset, offsets)
        tracker.read(partition, offsets, next_offset)

    def final(*origins: RecordOrigin) -> None:
        tracker.done_many((o.partition, o.offset) for o in origins)

    def written(writes: list[IndexWrite]) -> None:
        final(*(o for w in writes for o in (w.event.origin, *w.completes)))
        if parts.listener is not None:
            parts.listener(writes)

    flow = Dataflow(flow_id)
    source = StoppableKafkaSource(
        brokers,
        [s.topic],
        parts.stop,
        batch_size=s.embed_batch_size * 4,
        on_read=on_read,
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

    keyed = op.key_on("by_document", events, lambda e: e.doc_key)

    def gate(
        last: GateState | None, event: ChangeEvent
    ) -> tuple[GateState | None, ChangeEvent | None]:
        state, out = version_gate(last, event)
        if out is None:
            metrics.events.labels(_op(event), "stale").inc()
            final(event.origin)
        return state, out

    gated = op.filter_map_value(
        "version_gate_emit", op.stateful_map("version_gate", keyed, gate), lambda e: e
    )
    rebucketed = op.key_on(
        "by_bucket", cast(Stream[ChangeEvent], op.key_rm("unkey", gated)), _bucket
    )
    batches = op.collect(
        "embed_batch",
        rebucketed,
        timeout=timedelta(milliseconds=s.embed_max_wait_ms),
        max_size=s.embed_batch_size,
    )

    def process(keyed_batch: tuple[str, list[ChangeEvent]]) -> list[IndexWrite | DeadLetter]:
        result = indexer.process(keyed_batch[1])
        if result.chunks_embedded:
            metrics.embed_batch_size.observe(result.chunks_embedded)
            metrics.embed_latency.observe(result.embed_seconds)
        superseded: dict[str, list[RecordOrigin]] = {}
        for e in result.skipped:
            metrics.events.labels(_op(e), "skipped_indexed").inc()
            final(e.origin)
        for e in result.superseded:
            metrics.events.labels(_op(e), "superseded").inc()
            superseded.setdefault(e.doc_key, []).append(e.origin)
        writes: list[IndexWrite] = []
        for w in result.writes:
            done_with = superseded.pop(w.event.doc_key, [])
            writes.append(replace(w, completes=tuple(done_with)) if done_with else w)
        final(*(o for origins in superseded.values() for o in origins))  # skipped or DLQ'd
        return [*writes, *result.dead_letters]

    processed = op.flat_map("chunk_embed", batches, process)
    outcome = op.branch("split_process_errors", processed, lambda x: not isinstance(x, DeadLetter))
    writes = cast(Stream[IndexWrite], outcome.trues)
    op.output("index", writes, StoreSink(parts.store, metrics, written))

    process_dlq = cast(Stream[DeadLetter], outcome.falses)
    dead = cast(Stream[DeadLetter], op.merge("dead_letters", consume_dlq, parse_dlq, process_dlq))

    def count_dead(d: DeadLetter) -> DeadLetter:
        metrics.dead_letters.labels(d.error_class, d.step).inc()
        metrics.events.labels("unknown", "dead_letter").inc()
        final(d.origin)
        return d

    counted = op.map("count_dead", dead, count_dead)
    dlq_config = {"enable.idempotence": "true", "linger.ms": "5"}
    op.output(
        "dlq",
        op.map("to_dlq_message", counted, dead_letter_message),
        KafkaSink(brokers, s.dlq_topic, add_config=dlq_config),
    )
    return flow


def _op(event: Any) -> str:
    return "delete" if isinstance(event, Delete) else "upsert"
