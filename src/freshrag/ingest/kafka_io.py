"""Kafka connectors of the flow: a stoppable source, record conversion, the DLQ sink, topics."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.connectors.kafka import (
    KafkaError,
    KafkaSinkMessage,
    KafkaSource,
    KafkaSourceMessage,
)
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING

from freshrag.ingest.events import DeadLetter, RawRecord, RecordOrigin

IDLE_POLL = timedelta(milliseconds=20)

# (topic, partition, next offset to read, offsets of the records in this batch)
ReadListener = Callable[[str, int, int, list[int]], None]


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

    def next_batch(self) -> list[Any]:
        if self._stop.is_set():
            raise StopIteration()
        batch = list(self._inner.next_batch())
        self._awake = None if batch else datetime.now(UTC) + IDLE_POLL
        if self._on_read is not None:
            position = self._inner.snapshot()
            if isinstance(position, int) and position >= 0:
                offsets = [_offset_of(item) for item in batch]
                self._on_read(self._topic, self._partition, position, offsets)
        return batch

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
    ) -> None:
        super().__init__(
            brokers,
            topics,
            tail=True,
            starting_offset=OFFSET_BEGINNING,
            add_config=add_config,
            batch_size=batch_size,
            raise_on_errors=False,
        )
        self._stop_event = stop
        self._on_read = on_read

    def build_part(  # type: ignore[override]
        self, step_id: str, for_part: str, resume_state: Any
    ) -> _StoppablePartition:
        inner = super().build_part(step_id, for_part, resume_state)
        index, topic = for_part.split("-", 1)
        return _StoppablePartition(inner, self._stop_event, topic, int(index), self._on_read)


def to_raw_record(msg: KafkaSourceMessage[bytes | None, bytes | None]) -> RawRecord:
    ts = msg.timestamp[1] if msg.timestamp and msg.timestamp[0] != 0 else None
    if ts is None or ts < 0:
        ts = int(datetime.now(UTC).timestamp() * 1000)
    origin = RecordOrigin(msg.topic or "", int(msg.partition or 0), int(msg.offset or 0), int(ts))
    return RawRecord(msg.key, msg.value, origin)


def consume_error_to_dead_letter(err: KafkaError[bytes | None, bytes | None]) -> DeadLetter:
    raw = to_raw_record(err.msg)
    return DeadLetter(raw.key, raw.value, raw.origin, "KafkaConsumeError", str(err.err), "consume")


def dead_letter_message(dead: DeadLetter) -> KafkaSinkMessage[bytes | None, bytes | None]:
    return KafkaSinkMessage(key=dead.key, value=dead.value, headers=dead.headers())


def ensure_topics(bootstrap: str, topics: Iterable[tuple[str, int]], timeout: float = 30) -> None:
    """Create missing topics (name, partitions); existing ones are left as they are."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(name, num_partitions=parts) for name, parts in topics if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
        except Exception as exc:  # created concurrently by another process is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc
