"""Kafka connectors of the flow: a stoppable source, record conversion, the DLQ sink, topics."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.connectors.kafka import (
    KafkaError,
    KafkaSinkMessage,
    KafkaSource,
    KafkaSourceMessage,
)
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from freshrag.core.settings import Settings
from freshrag.ingest.dlq import DEFAULT_DLQ_MAX_MESSAGE_BYTES, fit_dead_letter
from freshrag.ingest.events import DeadLetter, RawRecord, RecordOrigin
from freshrag.ingest.watermarks import ReadNotice

log = logging.getLogger("freshrag.ingest.kafka")
IDLE_POLL = timedelta(milliseconds=20)

# (topic, partition, next offset to read, offsets of the records in this batch)
ReadListener = Callable[[str, int, int, list[int]], None]
# (topic, partition, how many offsets were lost below the log start)
LostListener = Callable[[str, int, int], None]


class _StoppablePartition(StatefulSourcePartition[Any, Any]):
    """Wraps bytewax's Kafka partition: ends on a stop event, and sleeps briefly when idle
    instead of spinning (2 cores are shared with the embedder)."""

    def __init__(
        self,
        inner: StatefulSourcePartition[Any, Any],
        stop: threading.Event,
        topic: str,
        partition: int,
        on_read: ReadListener | None,
    ) -> None:
        self._inner = inner
        self._stop = stop
        self._topic = topic
        self._partition = partition
        self._on_read = on_read
        self._awake: datetime | None = None
        self._notified: int | None = None

    def check_resume(self, resume_offset: int | None, on_lost: LostListener | None) -> None:
        """A recovery offset below the log start means records were deleted unread (retention
        passed, or the topic was recreated): say so loudly and count them, never hide it."""
        if resume_offset is None or resume_offset < 0:
            return
        consumer = getattr(self._inner, "_consumer", None)
        if consumer is None:
            return
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self._topic, self._partition), timeout=10
            )
        except Exception:  # the broker not answering yet is not a loss; reading will retry
            log.warning("cannot read the log start of %s/%d", self._topic, self._partition)
            return
        if resume_offset < low:
            lost = low - resume_offset
            log.error(
                "recovery offset %d of %s/%d is below the log start %d: %d records were "
                "deleted before they were indexed (retention passed?); reading from %d",
                resume_offset,
                self._topic,
                self._partition,
                low,
                lost,
                low,
            )
            if on_lost is not None:
                on_lost(self._topic, self._partition, lost)
        elif resume_offset > high:
            log.error(
                "recovery offset %d of %s/%d is past the log end %d: the topic was recreated; "
                "reading it from the start",
                resume_offset,
                self._topic,
                self._partition,
                high,
            )
            if on_lost is not None:
                on_lost(self._topic, self._partition, 0)

    def next_batch(self) -> list[Any]:
        if self._stop.is_set():
            raise StopIteration()
        batch = [self._placed(item) for item in self._inner.next_batch()]
        batch = [item for item in batch if item is not None]
        self._awake = None if batch else datetime.now(UTC) + IDLE_POLL
        position = self._inner.snapshot()
        if isinstance(position, int) and position >= 0:
            offsets = [_offset_of(item) for item in batch]
            if self._on_read is not None:
                self._on_read(self._topic, self._partition, position, offsets)
            if offsets or position != self._notified:
                # in-band, so the partition's watermark owner learns it through the dataflow
                batch.append(ReadNotice(self._partition, tuple(offsets), position))
                self._notified = position
        return batch

    def _placed(self, item: Any) -> Any:
        """A consume error names the partition it came from; one without an offset names no
        record (a broker or transport error): it is logged, not dead-lettered."""
        if not hasattr(item, "err"):
            return item
        msg = item.msg
        if msg.offset is None or msg.offset < 0:
            log.warning("Kafka error on %s/%d: %s", self._topic, self._partition, item.err)
            return None
        if msg.partition is None:
            return type(item)(item.err, replace(msg, partition=self._partition))
        return item

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


def _offset_of(item: Any) -> int:
    message = getattr(item, "msg", item)  # KafkaError wraps the message
    return int(message.offset or 0)


class StoppableKafkaSource(KafkaSource):  # type: ignore[misc]
    """bytewax's KafkaSource (offsets live in recovery snapshots, never committed), stoppable."""

    def __init__(
        self,
        brokers: list[str],
        topics: list[str],
        stop: threading.Event,
        *,
        batch_size: int = 1000,
        add_config: dict[str, str] | None = None,
        on_read: ReadListener | None = None,
        on_lost: LostListener | None = None,
    ) -> None:
        # Never jump to the end silently: an offset out of range restarts at the log start,
        # and `check_resume` reports what was lost.
        config = {"auto.offset.reset": "earliest", **(add_config or {})}
        super().__init__(
            brokers,
            topics,
            tail=True,
            starting_offset=OFFSET_BEGINNING,
            add_config=config,
            batch_size=batch_size,
            raise_on_errors=False,
        )
        self._stop_event = stop
        self._on_read = on_read
        self._on_lost = on_lost

    def build_part(  # type: ignore[override]
        self, step_id: str, for_part: str, resume_state: Any
    ) -> _StoppablePartition:
        inner = super().build_part(step_id, for_part, resume_state)
        index, topic = for_part.split("-", 1)
        part = _StoppablePartition(inner, self._stop_event, topic, int(index), self._on_read)
        part.check_resume(resume_state, self._on_lost)
        return part


def to_raw_record(msg: KafkaSourceMessage[bytes | None, bytes | None]) -> RawRecord:
    ts = msg.timestamp[1] if msg.timestamp and msg.timestamp[0] != 0 else None
    if ts is None or ts < 0:
        ts = int(datetime.now(UTC).timestamp() * 1000)
    origin = RecordOrigin(msg.topic or "", int(msg.partition or 0), int(msg.offset or 0), int(ts))
    return RawRecord(msg.key, msg.value, origin)


def consume_error_to_dead_letter(err: KafkaError[bytes | None, bytes | None]) -> DeadLetter:
    raw = to_raw_record(err.msg)
    return DeadLetter(raw.key, raw.value, raw.origin, "KafkaConsumeError", str(err.err), "consume")


def dead_letter_message(
    dead: DeadLetter, max_bytes: int = DEFAULT_DLQ_MAX_MESSAGE_BYTES
) -> KafkaSinkMessage[bytes | None, bytes | None]:
    """The DLQ record of a dead letter, truncated (and marked so) to fit in `max_bytes`."""
    try:
        headers = dead.headers()
    except UnicodeEncodeError:  # a reason quoting a lone surrogate must not stop the DLQ sink
        safe = replace(
            dead,
            error_class=_utf8_safe(dead.error_class),
            message=_utf8_safe(dead.message),
            step=_utf8_safe(dead.step),
            origin=replace(dead.origin, topic=_utf8_safe(dead.origin.topic)),
        )
        headers = safe.headers()
    fitted = fit_dead_letter(dead.key, dead.value, headers, max_bytes)
    return KafkaSinkMessage(key=fitted.key, value=fitted.value, headers=fitted.headers)


def _utf8_safe(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def dlq_producer_config(max_message_bytes: int) -> dict[str, str]:
    """The DLQ producer's limits, set explicitly so they match `dead_letter_message`'s budget."""
    return {
        "enable.idempotence": "true",
        "linger.ms": "5",
        "message.max.bytes": str(max_message_bytes),
        "batch.size": str(max_message_bytes),
    }


def dlq_topic_config(max_message_bytes: int) -> dict[str, str]:
    """Topic config for a DLQ topic freshrag creates: accepts what the DLQ producer may send."""
    return {"max.message.bytes": str(max_message_bytes)}


def ensure_topics(
    bootstrap: str,
    topics: Iterable[tuple[str, int]],
    timeout: float = 30,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create missing topics (name, partitions), with `configs[name]` as topic config if given;
    existing ones are left as they are."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    configs = configs or {}
    wanted = [
        NewTopic(name, num_partitions=parts, config=dict(configs.get(name, {})))
        for name, parts in topics
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except Exception as exc:  # created concurrently by another process is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc


def documents_topic_config(delete_retention_ms: int, min_compaction_lag_ms: int) -> dict[str, str]:
    """Topic config of the documents topic freshrag creates: log-compacted, so it keeps the
    latest event of every (tenant, document) key for good and can rebuild an index; a tombstone
    stays `delete_retention_ms` after compaction, and no event is compacted away before it is
    `min_compaction_lag_ms` old."""
    return {
        "cleanup.policy": "compact",
        "delete.retention.ms": str(delete_retention_ms),
        "min.compaction.lag.ms": str(min_compaction_lag_ms),
    }


def alter_command(bootstrap: str, topic: str, config: Mapping[str, str]) -> str:
    """The kafka-configs.sh command that gives an existing topic `config`."""
    pairs = ",".join(f"{k}={v}" for k, v in config.items())
    return (
        f"kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics "
        f"--entity-name {topic} --add-config {pairs}"
    )


def ensure_compacted(
    bootstrap: str,
    topic: str,
    config: Mapping[str, str],
    *,
    convert: bool,
    timeout: float = 30,
) -> str:
    """Check that the existing `topic` is log-compacted (`cleanup.policy=compact`, without
    `delete`, whose time retention would drop documents). If not: with `convert`, set `config`
    on it (incremental alter, other settings kept) and return "converted"; else log a warning
    naming the command and return "not compacted". "compacted" when it already is."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    deadline = time.monotonic() + timeout
    while True:
        try:
            described = admin.describe_configs([resource], request_timeout=timeout)
            entries = next(iter(described.values())).result(timeout=timeout)
            break
        except Exception as exc:
            # a topic created a moment ago may not be known to the broker yet
            if "UNKNOWN_TOPIC" in str(exc) and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise RuntimeError(f"cannot read the config of topic {topic}: {exc}") from exc
    policy = str(entries["cleanup.policy"].value) if "cleanup.policy" in entries else "delete"
    if set(policy.split(",")) == {"compact"}:
        return "compacted"
    if not convert:
        log.warning(
            "topic %s has cleanup.policy=%s: records are deleted after its retention, so it "
            "cannot rebuild the index; convert it with FRESHRAG_TOPIC_COMPACT_EXISTING=true "
            "or: %s",
            topic,
            policy,
            alter_command(bootstrap, topic, config),
        )
        return "not compacted"
    change = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            for name, value in config.items()
        ],
    )
    try:
        for future in admin.incremental_alter_configs([change], request_timeout=timeout).values():
            future.result(timeout=timeout)
    except Exception as exc:
        raise RuntimeError(
            f"cannot make topic {topic} compacted ({exc}); an operator can run: "
            f"{alter_command(bootstrap, topic, config)}"
        ) from exc
    log.warning("topic %s converted from cleanup.policy=%s to %s", topic, policy, dict(config))
    return "converted"


def ensure_event_topics(settings: Settings, partitions: int, timeout: float = 30) -> str:
    """Create the documents topic (compacted, `partitions`) and the DLQ topic (delete
    retention) when missing, and check that an existing documents topic is compacted
    (`ensure_compacted`, converting it when FRESHRAG_TOPIC_COMPACT_EXISTING is set)."""
    documents = documents_topic_config(
        settings.topic_delete_retention_ms, settings.topic_min_compaction_lag_ms
    )
    ensure_topics(
        settings.kafka_bootstrap,
        [(settings.topic, partitions), (settings.dlq_topic, 1)],
        timeout,
        configs={
            settings.topic: documents,
            settings.dlq_topic: dlq_topic_config(settings.dlq_max_message_bytes),
        },
    )
    return ensure_compacted(
        settings.kafka_bootstrap,
        settings.topic,
        documents,
        convert=settings.topic_compact_existing,
        timeout=timeout,
    )
