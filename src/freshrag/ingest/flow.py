"""The one place that wires the ingest dataflow together.

Kafka ─► parse ─► version gate (per source key, recoverable) ─► embed lanes (recoverable):
      small records: batched (chunk budget / max wait) ─► chunk + embed + write, in the worker
      a large document: chunk + embed + write in a background lane, so small ones pass it
bad records at any step (parse, chunk, embed, index) ─► DLQ topic with reason headers
read notices (source) + finished offsets (every outcome) ─► one watermark owner per partition
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
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
    Ignored,
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
from freshrag.ingest.lanes import LanePlanner, estimated_chunks, source_keys
from freshrag.ingest.metrics import IngestMetrics
from freshrag.ingest.ordering import Applied, gate, next_expiry_ms, prune
from freshrag.ingest.watermarks import (
    Finished,
    PartitionProgress,
    Progress,
    ReadNotice,
    WatermarkBoard,
    finished_by_partition,
)
from freshrag.retrieve.contract import DENSE_DIM, Store
from freshrag.retrieve.generations import manifest_for

Bytes = bytes | None
WriteListener = Callable[[list[IndexWrite]], None]
# Embed-lane keys per worker: batches spread over every worker (hash collisions average out
# over several keys per worker), and one source key always lands in the same lane.
BUCKETS_PER_WORKER = 4


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
    watermarks: WatermarkBoard = field(default_factory=WatermarkBoard)
    workers: int = 1  # bytewax workers in the whole cluster: embedding parallelism follows it


def embed_buckets(workers: int) -> int:
    return BUCKETS_PER_WORKER * max(1, workers)


def bucket_of(event: ChangeEvent, buckets: int) -> str:
    """By source key, so every event of a document id (any tenant) stays in order."""
    return str(zlib.crc32(event.doc_id.encode()) % buckets)


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

    def vectors(tenant: str, doc_ids: Sequence[str]) -> Any:
        return writer.read(lambda: parts.store.chunk_vectors(tenant, doc_ids))

    dimension = getattr(parts.dense, "dimension", DENSE_DIM)
    indexer = DocumentIndexer(
        parts.dense,
        parts.sparse,
        ChunkingConfig(max_tokens=s.chunk_tokens, overlap=s.chunk_overlap),
        layouts=layouts,
        vectors=vectors,
        fingerprint=manifest_for(s, int(dimension)).fingerprint,
    )
    brokers = s.kafka_bootstrap.split(",")

    def final(*origins: RecordOrigin) -> list[Finished]:
        return finished_by_partition((o.partition, o.offset) for o in origins)

    def written(writes: list[IndexWrite]) -> None:
        if parts.listener is not None:
            parts.listener(writes)

    flow = Dataflow(flow_id)
    source = StoppableKafkaSource(
        brokers,
        [s.topic],
        parts.stop,
        batch_size=s.embed_batch_size * 4,
        add_config={"fetch.wait.max.ms": str(s.kafka_fetch_wait_max_ms)},
        on_read=metrics.on_read,
        on_lost=lambda topic, partition, n: metrics.offsets_lost.labels(topic, str(partition)).inc(
            n
        ),
    )
    polled = op.input("kafka_in", flow, source)
    read_split = op.branch("split_read_notices", polled, lambda m: isinstance(m, ReadNotice))
    read_notices = cast(Stream[Progress], read_split.trues)
    raw = read_split.falses
    consumed = op.branch("split_consume_errors", raw, lambda m: not hasattr(m, "err"))
    consume_errors = cast(Stream[KafkaError[Bytes, Bytes]], consumed.falses)
    messages = cast(Stream[KafkaSourceMessage[Bytes, Bytes]], consumed.trues)
    consume_dlq = op.map("consume_error", consume_errors, consume_error_to_dead_letter)

    def parse(message: KafkaSourceMessage[Bytes, Bytes]) -> ChangeEvent | DeadLetter | Ignored:
        return parse_record(to_raw_record(message), limits, parts.mapping)

    parsed = op.map("parse", messages, parse)
    ignored_split = op.branch("split_ignored", parsed, lambda x: isinstance(x, Ignored))

    def finish_ignored(ignored: Ignored) -> list[Finished]:
        metrics.events.labels("tombstone", "ignored").inc()
        return final(ignored.origin)

    ignored_finished = op.flat_map(
        "ignored_finished", cast(Stream[Ignored], ignored_split.trues), finish_ignored
    )
    split = op.branch(
        "split_parse_errors", ignored_split.falses, lambda x: not isinstance(x, DeadLetter)
    )
    events = cast(Stream[ChangeEvent], split.trues)
    parse_dlq = cast(Stream[DeadLetter], split.falses)

    # keyed by the source key (document id): a delete that names no tenant finds its tenant
    keyed = op.key_on("by_source_key", events, lambda e: e.doc_id)
    retention_ms = int(s.delete_retention_s * 1000)

    def on_stale(event: ChangeEvent) -> None:
        metrics.events.labels(_op(event), "stale").inc()

    def build_gate(resume: dict[str, Applied] | None) -> VersionGateLogic:
        metrics.gate_documents.inc()  # a key enters the state; DISCARD takes it out
        return VersionGateLogic(resume, retention_ms, on_stale, metrics.gate_documents.dec)

    # one item per record: a record that becomes several events (a tenant move) stays whole,
    # so it is batched, counted and finalised once; a stale one is finished here
    gated = op.key_rm("unkey", op.stateful("source_key_gate", keyed, build_gate))
    gate_split = op.branch("split_stale", gated, lambda r: isinstance(r, Finished))
    stale_finished = cast(Stream[Progress], gate_split.trues)
    buckets = embed_buckets(parts.workers)
    rebucketed = op.key_on(
        "by_bucket",
        cast(Stream[Record], gate_split.falses),
        lambda r: bucket_of(r[0], buckets),
    )
    max_wait = timedelta(milliseconds=s.embed_max_wait_ms)

    def process(records: list[Record]) -> list[DeadLetter | Finished]:
        """Chunk, embed and write one batch; returns what must go to the DLQ, and the offsets
        final here. Each record gets one outcome (dead_letter > applied > skipped_indexed >
        superseded) and is finished exactly once: dead ones when they are counted."""
        result = indexer.process([e for record in records for e in record])
        if result.chunks_embedded:
            metrics.embed_batch_size.observe(result.chunks_embedded)
            metrics.embed_latency.observe(result.embed_seconds)
        if result.chunks_reused:
            metrics.chunks_reused.inc(result.chunks_reused)
        if result.patched:
            metrics.payload_patches.inc(result.patched)
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
                metrics.on_written(
                    event.tenant, event.origin.partition, event.origin.timestamp_ms, now
                )
        done = [e.origin for r in records for e in r if _key(e.origin) not in dead]
        return [*dead.values(), *final(*done)]

    background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="freshrag-large-docs")
    drain_deadline: list[float] = []

    def stopping() -> bool:
        """True once a stop was asked and `stop_drain_s` have passed: from then on, what is
        still buffered stays in the snapshot for the next start instead of holding the stop."""
        if not parts.stop.is_set():
            return False
        if not drain_deadline:
            drain_deadline.append(time.monotonic() + s.stop_drain_s)
        return time.monotonic() >= drain_deadline[0]

    def process_in_background(records: list[Record]) -> list[DeadLetter | Finished]:
        """The background lane's calls to the model yield to the small batches' ones."""
        lane = getattr(parts.dense, "background_lane", None)
        if lane is None:
            return process(records)
        with lane():
            return process(records)

    def estimate(record: Record) -> int:
        return estimated_chunks(record, s.chunk_tokens, s.chunk_overlap)

    def build_lanes(resume: LaneState | None) -> EmbedLanesLogic:
        return EmbedLanesLogic(
            resume,
            max_wait=max_wait,
            batch_chunks=s.embed_batch_size,
            background_min_chunks=s.embed_background_min_chunks,
            estimate=estimate,
            process=process,
            process_in_background=process_in_background,
            background=background,
            on_background=metrics.background_records.inc,
            stopping=stopping,
        )

    # the step keeps its old id: snapshots of the former batch buffer resume here
    lanes = op.stateful("embed_batch_buffer", rebucketed, build_lanes)
    batches = op.key_rm("unkey_lanes", lanes)

    outcomes = op.flat_map("chunk_embed_write", batches, lambda out: out)
    outcome_split = op.branch("split_finished", outcomes, lambda x: isinstance(x, Finished))
    written_finished = cast(Stream[Progress], outcome_split.trues)
    process_dlq = cast(Stream[DeadLetter], outcome_split.falses)
    dead = cast(Stream[DeadLetter], op.merge("dead_letters", consume_dlq, parse_dlq, process_dlq))

    def count_dead(d: DeadLetter) -> DeadLetter:
        metrics.dead_letters.labels(d.error_class, d.step).inc()
        metrics.events.labels("unknown", "dead_letter").inc()
        return d

    counted = op.map("count_dead", dead, count_dead)
    dead_finished = op.flat_map("dead_finished", counted, lambda d: final(d.origin))
    progress = op.merge(
        "progress", read_notices, ignored_finished, stale_finished, written_finished, dead_finished
    )
    board = parts.watermarks

    def build_owner(resume: PartitionState | None) -> PartitionWatermarkLogic:
        return PartitionWatermarkLogic(resume, board.set)

    op.stateful(
        "partition_watermarks",
        op.key_on("by_partition", progress, lambda p: str(p.partition)),
        build_owner,
    )
    dlq_config = dlq_producer_config(s.dlq_max_message_bytes)

    def to_dlq_message(d: DeadLetter) -> KafkaSinkMessage[Bytes, Bytes]:
        return dead_letter_message(d, s.dlq_max_message_bytes)  # truncated to fit, never fails

    op.output(
        "dlq",
        op.map("to_dlq_message", counted, to_dlq_message),
        KafkaSink(brokers, s.dlq_topic, add_config=dlq_config),
    )
    return flow


class VersionGateLogic(
    op.StatefulLogic[ChangeEvent, list[ChangeEvent] | Finished, dict[str, Applied]]
):
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

    def on_item(self, value: ChangeEvent) -> tuple[list[list[ChangeEvent] | Finished], bool]:
        now = _now_ms()
        state, out = gate(prune(self.state, now, self.retention_ms), value, now)
        self.state = state
        if not out:
            self.on_stale(value)
            return [Finished(value.origin.partition, (value.origin.offset,))], self._keep()
        return [out], self._keep()

    def on_notify(self) -> tuple[list[list[ChangeEvent] | Finished], bool]:
        self.state = prune(self.state, _now_ms(), self.retention_ms)
        return [], self._keep()

    def on_eof(self) -> tuple[list[list[ChangeEvent] | Finished], bool]:
        return [], self._keep()

    def notify_at(self) -> datetime | None:
        due = next_expiry_ms(self.state, self.retention_ms)
        return None if due is None else datetime.fromtimestamp(due / 1000 + 0.001, tz=UTC)

    def snapshot(self) -> dict[str, Applied]:
        return dict(self.state or {})


Record = list[ChangeEvent]  # what one Kafka record became after the gate
LaneOutput = DeadLetter | Finished  # a dead letter, or offsets made final
# (small records waiting, their flush deadline in epoch seconds, large records not yet written)
LaneState = tuple[list[Record], float | None, list[Record]]
BACKGROUND_POLL_S = 0.02


@dataclass
class _Job:
    record: Record
    keys: set[str]
    future: Future[list[LaneOutput]]


class EmbedLanesLogic(op.StatefulLogic[Record, list[LaneOutput], LaneState]):
    """One bucket's two lanes (see `lanes`). Small records are buffered like `op.collect`
    (emitted at `batch_chunks` estimated chunks or `max_wait` after the first) and processed
    here; a large document goes to the `background` executor, polled every 20 ms. Both are in
    the snapshot until written, so a crash replays them and they hold the watermark meanwhile.
    Emits the dead letters of what it processed and the offsets it made final."""

    def __init__(
        self,
        resume: LaneState | tuple[list[Record], float | None] | None,
        *,
        max_wait: timedelta,
        batch_chunks: int,
        background_min_chunks: int,
        estimate: Callable[[Record], int],
        process: Callable[[list[Record]], list[LaneOutput]],
        background: Executor,
        process_in_background: Callable[[list[Record]], list[LaneOutput]] | None = None,
        on_restore: Callable[[list[Record]], None] = lambda _records: None,
        on_background: Callable[[], None] = lambda: None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.on_background = on_background
        self.stopping = stopping
        self.max_wait = max_wait
        self.batch_chunks = batch_chunks
        self.estimate = estimate
        self.process = process
        self.process_in_background = process_in_background or process
        self.background = background
        self.planner = LanePlanner(background_min_chunks)
        self.small: list[Record] = []
        self.small_chunks = 0
        self.deadline: float | None = None
        self.jobs: deque[_Job] = deque()
        small, deadline, large = _lane_state(resume)
        if small or large:
            on_restore([*small, *large])
        for record in small:
            self._buffer(record, source_keys(record))
        self.deadline = deadline if small else None
        for record in large:
            self._submit(record, source_keys(record))

    def _buffer(self, record: Record, keys: set[str]) -> None:
        if not self.small:
            self.deadline = time.time() + self.max_wait.total_seconds()
        self.small.append(record)
        self.small_chunks += self.estimate(record)
        self.planner.add_small(keys)

    def _flush_small(self) -> list[LaneOutput]:
        if self.stopping():
            return []  # left in the snapshot: the next start writes it
        batch, self.small, self.small_chunks, self.deadline = self.small, [], 0, None
        self.planner.small_flushed()
        return self.process(batch) if batch else []

    def _submit(self, record: Record, keys: set[str]) -> None:
        self.planner.add_background(keys)
        self.on_background()
        self.jobs.append(
            _Job(record, keys, self.background.submit(self.process_in_background, [record]))
        )

    def _reap(self, wait: bool = False) -> list[LaneOutput]:
        """Dead letters of finished background jobs, in submission order. A job that failed
        (the store stayed unavailable) fails the flow here, loudly, like a small batch would."""
        out: list[LaneOutput] = []
        while self.jobs:
            job = self.jobs[0]
            if not job.future.done():
                if not wait:
                    break
                if self.stopping():  # not started ones stay in the snapshot
                    for later in self.jobs:
                        later.future.cancel()
                    break
                try:
                    job.future.result(timeout=BACKGROUND_POLL_S * 10)
                except FuturesTimeout:
                    continue
                except BaseException:
                    pass  # raised again just below, with the cancellations
            if job.future.cancelled():
                break  # a stop cancelled it: it stays in the snapshot
            try:
                out.extend(job.future.result())
            except BaseException:
                for later in self.jobs:
                    later.future.cancel()
                raise
            self.jobs.popleft()
            self.planner.background_done(job.keys)
        return out

    def _emit(self, out: list[LaneOutput]) -> tuple[list[list[LaneOutput]], bool]:
        keep = StatefulLogic.RETAIN if self.small or self.jobs else StatefulLogic.DISCARD
        return ([out] if out else []), keep

    def on_item(self, value: Record) -> tuple[list[list[LaneOutput]], bool]:
        out = self._reap()
        keys = source_keys(value)
        chunks = self.estimate(value)
        lane = self.planner.route(keys, chunks)
        if lane == "flush_then_background":
            out.extend(self._flush_small())
        if lane == "small":
            self._buffer(value, keys)
            if self.small_chunks >= self.batch_chunks or len(self.small) >= self.batch_chunks:
                out.extend(self._flush_small())
        else:
            self._submit(value, keys)
        return self._emit(out)

    def on_notify(self) -> tuple[list[list[LaneOutput]], bool]:
        out = self._reap()
        if self.small and (self.deadline is None or time.time() >= self.deadline):
            out.extend(self._flush_small())
        return self._emit(out)

    def on_eof(self) -> tuple[list[list[LaneOutput]], bool]:
        out = self._flush_small()
        out.extend(self._reap(wait=True))
        return self._emit(out)

    def notify_at(self) -> datetime | None:
        due = [t for t in (self.deadline,) if t is not None and self.small]
        if self.jobs:
            due.append(time.time() + BACKGROUND_POLL_S)
        return datetime.fromtimestamp(min(due), tz=UTC) if due else None

    def snapshot(self) -> LaneState:
        return (list(self.small), self.deadline, [job.record for job in self.jobs])


def _lane_state(
    resume: LaneState | tuple[list[Record], float | None] | None,
) -> LaneState:
    """Snapshots of the former batch buffer were (records, deadline): still accepted."""
    if resume is None:
        return [], None, []
    if len(resume) == 2:
        return list(resume[0]), resume[1], []
    small, deadline, large = resume  # type: ignore[misc]
    return list(small), deadline, list(large)


_OUTCOMES = ("superseded", "skipped_indexed", "applied")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _op(event: Any) -> str:
    return "delete" if isinstance(event, Delete) else "upsert"


PartitionState = tuple[int, list[int], list[int]]


class PartitionWatermarkLogic(op.StatefulLogic[Progress, None, PartitionState]):
    """The one owner of a partition's watermark in the whole cluster (see `watermarks`): folds
    read notices and finished offsets, and publishes the watermark to this process's board.
    Its state is snapshotted with the rest, so a restart resumes it consistently."""

    def __init__(self, resume: PartitionState | None, publish: Callable[[int, int], None]):
        self.progress = PartitionProgress.from_state(resume)
        self.publish = publish
        self.partition: int | None = None
        self.published: int | None = None

    def on_item(self, value: Progress) -> tuple[list[None], bool]:
        self.partition = value.partition
        self.progress.apply(value)
        mark = self.progress.watermark()
        if mark != self.published:
            self.publish(value.partition, mark)
            self.published = mark
        return [], StatefulLogic.RETAIN

    def snapshot(self) -> PartitionState:
        return self.progress.to_state()


def _key(origin: RecordOrigin) -> tuple[int, int]:
    return (origin.partition, origin.offset)
