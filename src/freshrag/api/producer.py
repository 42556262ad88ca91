"""Writes from the API become change events on Kafka (idempotent producer); the flow indexes
them, so the API never writes the index directly and there is one path for every change."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any


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


class DocumentProducer:
    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 10.0) -> None:
        from confluent_kafka import Producer

        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 0,
                "message.timeout.ms": int(timeout_s * 1000),
                "message.max.bytes": 10_000_000,
            }
        )
        self._lock = threading.Lock()

    def send(self, event: dict[str, Any]) -> Produced:
        """Produce one event keyed by document id and wait for the broker's acknowledgement."""
        from confluent_kafka import KafkaException

        done = threading.Event()
        outcome: dict[str, Any] = {}

        def delivered(err: Any, msg: Any) -> None:
            outcome["err"] = err
            outcome["msg"] = msg
            done.set()

        payload = json.dumps(event, ensure_ascii=False, default=str).encode()
        try:
            with self._lock:
                self._producer.produce(
                    self.topic, key=str(event["id"]).encode(), value=payload, on_delivery=delivered
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

    def ready(self, timeout_s: float = 2.0) -> bool:
        try:
            metadata = self._producer.list_topics(timeout=timeout_s)
        except Exception:
            return False
        return bool(metadata.brokers)

    def close(self) -> None:
        self._producer.flush(5)
