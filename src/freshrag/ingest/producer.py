"""The one way change events reach Kafka: `EventProducer.send` (one event, waits for the
broker's acknowledgement: the API's writes) and `send_many` (a stream of events, batched and
compressed: `freshrag load`). Both encode each record with `events.encode_event` (keyed by
tenant and document id, see `events.document_key`), and both use the idempotent producer (no
duplicates on retry).

The partition is chosen by the document id alone (`partition_for`: CRC32 of the id, the hash of
librdkafka's default partitioner, so it is the partition the bare-id keys of earlier versions
went to). One document's events therefore stay on one partition, across tenants and across
the change of key: the version gate breaks version ties by offset, which only orders records of
one partition.

confluent_kafka is imported when a producer is made, so importing this module loads no client.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from freshrag.ingest.events import encode_event, parse_key

# how long a topic's partition count is trusted before it is asked again
PARTITIONS_REFRESH_S = 300.0


def partition_for(doc_id: Any, partitions: int) -> int:
    """The partition of a document's events: CRC32 of its id (UTF-8) modulo the partition count,
    as librdkafka's default `consistent_random` partitioner placed a bare-id key."""
    text = doc_id if isinstance(doc_id, str) else str(doc_id)
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) % partitions


class ProduceError(RuntimeError):
    def __init__(self, upstream: str, reason: str) -> None:
        super().__init__(f"Kafka at {upstream}: {reason}")
        self.upstream = upstream
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Produced:
    topic: str
    partition: int
    offset: int

    @property
    def token(self) -> str:
        """Consistency token: wait until the flow has indexed past this record."""
        return f"{self.partition}:{self.offset}"


class EventProducer:
    """Produces native change events to `topic`.

    `timeout_s` bounds each message (librdkafka fails it after that) and `send`'s wait;
    `linger_ms` and `compression` trade latency for throughput (a loader batches, the API
    does not)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        timeout_s: float = 10.0,
        *,
        linger_ms: int = 0,
        compression: str | None = None,
    ) -> None:
        from confluent_kafka import Producer

        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "message.timeout.ms": int(timeout_s * 1000),
            "message.max.bytes": 10_000_000,
        }
        if compression:
            config["compression.type"] = compression
        self._producer = Producer(config)
        self._lock = threading.Lock()
        self._partitions: int | None = None
        self._partitions_at = 0.0
        self._asked_at = -1e9

    def _partition(self, event: Mapping[str, Any]) -> int:
        """`partition_for` the event's id, or -1 (the client's partitioner) while the topic's
        partition count is unknown (the topic does not exist yet)."""
        now = time.monotonic()
        stale = now - self._partitions_at > PARTITIONS_REFRESH_S
        if (self._partitions is None or stale) and now - self._asked_at > 1.0:
            self._asked_at = now  # while the broker is down, ask at most once a second
            try:
                meta = self._producer.list_topics(self.topic, timeout=min(self.timeout_s, 5.0))
                topic = meta.topics.get(self.topic)
                if topic is not None and topic.error is None and topic.partitions:
                    self._partitions = len(topic.partitions)
                    self._partitions_at = now
            except Exception:  # unreachable: keep the last count; the produce reports it
                pass
        if self._partitions is None:
            return -1
        return partition_for(event.get("id"), self._partitions)

    def send(self, event: Mapping[str, Any]) -> Produced:
        """Produce one event and wait for the broker's acknowledgement."""
        from confluent_kafka import KafkaException

        done = threading.Event()
        outcome: dict[str, Any] = {}

        def delivered(err: Any, msg: Any) -> None:
            outcome["err"] = err
            outcome["msg"] = msg
            done.set()

        key, value = encode_event(event)
        partition = self._partition(event)
        try:
            with self._lock:
                self._producer.produce(
                    self.topic,
                    key=key,
                    value=value,
                    partition=partition,
                    on_delivery=delivered,
                )
        except (KafkaException, BufferError) as exc:
            raise ProduceError(self.bootstrap, str(exc)) from exc
        # Bounded by the clock, not by loop passes: poll() returns early whenever it serves any
        # callback (other requests' deliveries), so counting passes could give up long before
        # the broker had a chance to acknowledge a write that then lands. librdkafka itself
        # fails the message after message.timeout.ms, so its report arrives before this ends.
        deadline = time.monotonic() + self.timeout_s + 1
        while not done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._producer.poll(min(0.05, remaining))
        if not done.is_set():
            raise ProduceError(self.bootstrap, "no acknowledgement before the timeout")
        if outcome["err"] is not None:
            raise ProduceError(self.bootstrap, str(outcome["err"]))
        msg = outcome["msg"]
        return Produced(msg.topic(), msg.partition(), msg.offset())

    def send_many(
        self,
        events: Iterable[Mapping[str, Any]],
        on_sent: Callable[[], None] = lambda: None,
        limit: int | None = None,
        flush_s: float = 60.0,
    ) -> int:
        """Produce events without waiting for each (a full queue waits for room), then wait for
        every acknowledgement (up to `flush_s`); returns the count. `on_sent` runs per acknowledged
        event.
        Raises ProduceError when Kafka is unreachable or any event was not acknowledged."""

        def records() -> Iterator[tuple[bytes, bytes | None, int]]:
            for event in events:
                key, value = encode_event(event)
                yield key, value, self._partition(event)

        return self.send_records(records(), on_sent, limit, flush_s)

    def send_records(
        self,
        records: Iterable[tuple[bytes, bytes | None, int | None]],
        on_sent: Callable[[], None] = lambda: None,
        limit: int | None = None,
        flush_s: float = 60.0,
    ) -> int:
        """`send_many` for ready records: (key, value or None for a tombstone, partition; None
        for `partition_for` the key's document)."""
        from confluent_kafka import KafkaException

        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                on_sent()

        try:
            self._producer.list_topics(timeout=10)
        except KafkaException as exc:
            raise ProduceError(self.bootstrap, f"unreachable: {exc}") from None
        sent = 0
        for key, value, chosen in records:
            if limit is not None and sent >= limit:
                break
            partition = chosen
            if partition is None:
                partition = self._partition({"id": parse_key(key).doc_id})
            while True:
                try:
                    self._producer.produce(
                        self.topic,
                        key=key,
                        value=value,
                        partition=partition,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.5)
                except KafkaException as exc:
                    raise ProduceError(
                        self.bootstrap, f"cannot produce to {self.topic}: {exc}"
                    ) from exc
            self._producer.poll(0)
            sent += 1
        remaining = self._producer.flush(flush_s)
        if remaining or errors:
            raise ProduceError(
                self.bootstrap,
                f"{remaining} event(s) not acknowledged, {len(errors)} failed: {errors[:3]}",
            )
        return sent

    def ready(self, timeout_s: float = 2.0) -> bool:
        try:
            metadata = self._producer.list_topics(timeout=timeout_s)
        except Exception:
            return False
        return bool(metadata.brokers)

    def close(self) -> None:
        self._producer.flush(5)
