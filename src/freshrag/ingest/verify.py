"""`freshrag verify [--repair]`: read the source topic and the index, compare them (`drift`),
and replay the drifted keys into the topic for the running ingest to fix.

The topic is read once from its start to the end offsets taken when verify starts, with a
standalone consumer (partitions assigned, no group, nothing committed). Records that arrive
meanwhile are read afterwards by key only, to mark their documents in flight. The index is read
through the `Store` protocol (every point's payload). Cost: the whole topic and every payload.
`repair_drift` produces `drift.repair_events`, leaving out documents written to since verify
read the topic (a live writer's newer record must not be undone by a replay).
"""

from __future__ import annotations

import heapq
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from freshrag.core.settings import Settings
from freshrag.ingest.drift import (
    DocKey,
    Drift,
    DriftReport,
    compare,
    indexed_from_payloads,
    repair_events,
    winning_events,
)
from freshrag.ingest.events import (
    ChangeEvent,
    DeadLetter,
    DebeziumMapping,
    Delete,
    EventLimits,
    Ignored,
    RawRecord,
    RecordOrigin,
    Upsert,
    encode_event,
    parse_record,
)
from freshrag.retrieve.contract import Store

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class VerifyError(RuntimeError):
    """Verify could not read one side (the topic is missing, Kafka unreachable, ...)."""


@dataclass(frozen=True, slots=True)
class SourceLog:
    """The parsed topic up to `ends`: events in log order (per partition, merged by time)."""

    events: list[ChangeEvent]
    ends: dict[int, int]
    records: int
    bad_records: int


def _consumer(bootstrap: str) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"freshrag-verify-{uuid.uuid4().hex}",  # required; never committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "fetch.max.bytes": 52_428_800,
        }
    )


def _partitions(consumer: Any, topic: str, timeout_s: float) -> list[int]:
    from confluent_kafka import KafkaException

    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise VerifyError(f"Kafka unreachable: {exc}") from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        reason = found.error if found is not None and found.error else "no such topic"
        raise VerifyError(f"cannot read topic {topic!r}: {reason}")
    return sorted(found.partitions)


def end_offsets(bootstrap: str, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """partition -> its high watermark (the offset the next record gets)."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(bootstrap)
    try:
        return {
            p: int(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1])
            for p in _partitions(consumer, topic, timeout_s)
        }
    finally:
        consumer.close()


def _read_range(
    bootstrap: str,
    topic: str,
    starts: Mapping[int, int] | None,
    ends: Mapping[int, int],
    on_record: Callable[[RawRecord], None],
    timeout_s: float,
) -> None:
    """Every record of partition p in [starts[p] (the log start when None), ends[p])."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    first = dict(starts or {})
    wanted = {p: end for p, end in ends.items() if end > first.get(p, 0)}
    if not wanted:
        return
    consumer = _consumer(bootstrap)
    try:
        consumer.assign(
            [TopicPartition(topic, p, first.get(p, OFFSET_BEGINNING)) for p in sorted(wanted)]
        )
        open_parts = set(wanted)
        idle_deadline = time.monotonic() + timeout_s
        while open_parts:
            batch = consumer.consume(num_messages=1000, timeout=0.5)
            if not batch:
                if time.monotonic() > idle_deadline:
                    raise VerifyError(
                        f"reading {topic!r} stalled for {timeout_s:.0f} s with partitions "
                        f"{sorted(open_parts)} unfinished"
                    )
                continue
            idle_deadline = time.monotonic() + timeout_s
            for msg in batch:
                err = msg.error()
                partition = msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if msg.offset() >= wanted.get(partition, 0):
                            open_parts.discard(partition)
                        continue
                    if err.fatal() or not err.retriable():
                        raise VerifyError(f"reading {topic!r}: {err.str()}")
                    continue
                offset = msg.offset()
                if partition not in open_parts or offset >= wanted[partition]:
                    open_parts.discard(partition)
                    continue
                _, ts = msg.timestamp()
                on_record(
                    RawRecord(msg.key(), msg.value(), RecordOrigin(topic, partition, offset, ts))
                )
                if offset + 1 >= wanted[partition]:
                    open_parts.discard(partition)
    finally:
        consumer.close()


def read_source(
    bootstrap: str,
    topic: str,
    *,
    limits: EventLimits | None = None,
    mapping: DebeziumMapping | None = None,
    progress: Progress | None = None,
    timeout_s: float = 30.0,
) -> SourceLog:
    """The topic from its start to the end offsets of now, parsed (bad records counted)."""
    ends = end_offsets(bootstrap, topic)
    total = sum(ends.values())
    per_partition: dict[int, list[tuple[int, int, ChangeEvent]]] = {p: [] for p in ends}
    counts = [0, 0]

    def keep(record: RawRecord) -> None:
        counts[0] += 1
        parsed = parse_record(record, limits, mapping)
        if isinstance(parsed, DeadLetter):
            counts[1] += 1
        elif not isinstance(parsed, Ignored):
            if isinstance(parsed, Upsert):
                parsed = replace(parsed, raw=None)  # the bytes again, for nothing
            o = record.origin
            per_partition[o.partition].append((o.timestamp_ms, o.offset, parsed))
        if progress is not None and counts[0] % 1000 == 0:
            progress("reading the topic", counts[0], total)

    _read_range(bootstrap, topic, None, ends, keep, timeout_s)
    if progress is not None:
        progress("reading the topic", total, total)
    # each partition in offset order; across partitions by record time (one document's records
    # share a partition, so this order only matters for keys spread over partitions)
    merged = heapq.merge(*per_partition.values(), key=lambda item: item[0])
    return SourceLog([e for _, _, e in merged], ends, counts[0], counts[1])


def touched_since(
    bootstrap: str,
    topic: str,
    starts: Mapping[int, int],
    *,
    limits: EventLimits | None = None,
    mapping: DebeziumMapping | None = None,
    timeout_s: float = 30.0,
) -> tuple[set[tuple[str | None, str]], dict[int, int]]:
    """(tenant, doc_id) of the records from `starts` to the end offsets of now (tenant None: a
    delete naming no tenant), and those end offsets."""
    ends = end_offsets(bootstrap, topic)
    out: set[tuple[str | None, str]] = set()

    def note(record: RawRecord) -> None:
        parsed = parse_record(record, limits, mapping)
        if isinstance(parsed, Delete) and not parsed.tenant_known:
            out.add((None, parsed.doc_id))
        elif not isinstance(parsed, DeadLetter | Ignored):
            out.add((parsed.tenant, parsed.doc_id))

    later = {p: e for p, e in ends.items() if e > starts.get(p, 0)}
    _read_range(bootstrap, topic, {p: starts.get(p, 0) for p in later}, later, note, timeout_s)
    return out, {p: max(e, starts.get(p, 0)) for p, e in ends.items()}


@dataclass
class Verification:
    report: DriftReport
    winners: dict[DocKey, ChangeEvent]
    duration_s: float
    read_to: dict[int, int]  # end offsets up to which verify has seen every record


def verify(
    store: Store,
    bootstrap: str,
    topic: str,
    *,
    tenant: str | None = None,
    limits: EventLimits | None = None,
    mapping: DebeziumMapping | None = None,
    progress: Progress | None = None,
) -> Verification:
    """Compare the index in `store` with `topic` (see `drift`)."""
    started = time.perf_counter()
    source = read_source(bootstrap, topic, limits=limits, mapping=mapping, progress=progress)
    winners = winning_events(source.events)
    # the watermarks before the index scan: whatever is below them is in the scanned index
    published = {int(p): int(o) for p, o in store.load_watermarks(topic).items()}
    if progress is not None:
        progress("reading the index", 0, 1)
    indexed = indexed_from_payloads(store.scroll_payloads(tenant))
    if progress is not None:
        progress("reading the index", 1, 1)
    touched, read_to = touched_since(bootstrap, topic, source.ends, limits=limits, mapping=mapping)
    report = compare(
        winners,
        indexed,
        topic=topic,
        watermarks=published or None,
        ends=source.ends,
        touched=touched,
        tenant=tenant,
    )
    report.records = source.records
    report.bad_records = source.bad_records
    return Verification(report, winners, time.perf_counter() - started, read_to)


@dataclass(frozen=True, slots=True)
class Replayed:
    drift: Drift
    events: list[dict[str, Any]]


def repair_drift(
    bootstrap: str,
    topic: str,
    drift: Sequence[Drift],
    read_to: Mapping[int, int] | None = None,
    *,
    limits: EventLimits | None = None,
    mapping: DebeziumMapping | None = None,
) -> tuple[list[Replayed], list[Drift]]:
    """Produce `drift.repair_events` of every drifted document: (what was sent, what was left
    alone). Each replay goes under the document's replay key to the partition of its winning
    event (one partition orders a document's records for the gate), followed by the tombstone of
    that key, so compaction keeps neither and the document's own key keeps its real events.

    The gate never lets a replay undo a write that came after it (`ordering.is_after`). With
    `read_to` (`Verification.read_to`), a document that received a record since verify read the
    topic is also left alone and reported: it is changing, so its drift may be gone already."""
    from freshrag.ingest.producer import EventProducer

    skipped: list[Drift] = []
    if read_to is not None and drift:
        touched, _ = touched_since(bootstrap, topic, read_to, limits=limits, mapping=mapping)
        anyone = {doc for tenant, doc in touched if tenant is None}
        keep: list[Drift] = []
        for d in drift:
            changed = (d.tenant, d.doc_id) in touched or d.doc_id in anyone
            (skipped if changed else keep).append(d)
        drift = keep
    plan = [Replayed(d, repair_events([d])) for d in drift]
    if not plan:
        return [], skipped
    producer = EventProducer(bootstrap, topic, linger_ms=5)
    try:
        producer.send_records(repair_records(plan))
    finally:
        producer.close()
    return plan, skipped


def repair_records(plan: Sequence[Replayed]) -> Iterator[tuple[bytes, bytes | None, int | None]]:
    """(key, value, partition) of each replay, then the tombstone of its replay key."""
    for item in plan:
        source = item.drift.source
        partition: int | None = None  # the producer's own choice (`partition_for` the id)
        if source is not None:
            partition = source.origin.partition
        elif item.drift.indexed_partition >= 0:  # the source holds nothing: where it came from
            partition = item.drift.indexed_partition
        for event in item.events:
            key, value = encode_event(event)
            yield key, value, partition
            yield key, None, partition


def verify_settings(
    settings: Settings, store: Store, *, tenant: str | None = None, progress: Progress | None = None
) -> Verification:
    return verify(
        store,
        settings.kafka_bootstrap,
        settings.topic,
        tenant=tenant,
        limits=EventLimits(max_document_bytes=settings.max_document_bytes),
        progress=progress,
    )
