"""Honest document writes on real Kafka (issue 10): the producer's wait is bounded by time, not
by poll passes, and an Idempotency-Key retry produces no second event (records are counted in
the topic itself)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient

from freshrag.api.app import create_app
from freshrag.api.services import build_services
from freshrag.core.settings import load_settings
from freshrag.ingest.producer import EventProducer
from freshrag.retrieve.edge_store import EdgeStore

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

KEY_A, KEY_B = "writes-key-a-0123456789", "writes-key-b-0123456789"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}


def records_in(bootstrap: str, topic: str) -> int:
    """Records in the topic, from the partitions' offsets (idempotent producer: no gaps)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "count-only"})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        total = 0
        for partition in meta.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


@pytest.fixture
def writes(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    embedder: Any,
    tmp_path: Any,
) -> Iterator[tuple[TestClient, str]]:
    topic = make_topic("writes", partitions=2)
    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        api_keys={KEY_A: "tenant-a", KEY_B: "tenant-b"},
        metrics_port=0,
    )
    store = EdgeStore(tmp_path / "index", settings.collection)
    store.ensure_collection()
    services = build_services(settings, store=store, embedder=embedder)
    with TestClient(create_app(settings, services)) as http:
        yield http, topic
    services.close()
    store.close()


def test_idempotency_key_retry_produces_no_second_event(
    writes: tuple[TestClient, str], kafka_bootstrap: str
) -> None:
    http, topic = writes
    doc = {"id": "kb-1", "title": "Refunds", "text": "Refunds take 30 days.", "version": 3}
    first = http.post("/v1/documents", headers={**A, "Idempotency-Key": "retry-1"}, json=doc)
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = http.post("/v1/documents", headers={**A, "Idempotency-Key": "retry-1"}, json=doc)
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert records_in(kafka_bootstrap, topic) == 1

    # the same key with another body is refused and produces nothing
    other = http.post(
        "/v1/documents", headers={**A, "Idempotency-Key": "retry-1"}, json={**doc, "text": "x"}
    )
    assert other.status_code == 422 and other.json()["error"]["field"] == "Idempotency-Key"
    assert records_in(kafka_bootstrap, topic) == 1

    # keys are per tenant; without a key every request is a new event
    b = http.post("/v1/documents", headers={**B, "Idempotency-Key": "retry-1"}, json=doc)
    assert b.status_code == 202 and "Idempotent-Replayed" not in b.headers
    assert records_in(kafka_bootstrap, topic) == 2
    for _ in range(2):
        assert http.post("/v1/documents", headers=A, json=doc).status_code == 202
    assert records_in(kafka_bootstrap, topic) == 4

    # deletes take a key too
    d1 = http.delete("/v1/documents/kb-1", headers={**A, "Idempotency-Key": "del-1"})
    d2 = http.delete("/v1/documents/kb-1", headers={**A, "Idempotency-Key": "del-1"})
    assert d1.status_code == d2.status_code == 202 and d1.json() == d2.json()
    assert records_in(kafka_bootstrap, topic) == 5

    bad = http.post("/v1/documents", headers={**A, "Idempotency-Key": "a b"}, json=doc)
    assert bad.status_code == 422  # printable ASCII without blanks, 1-255 characters


class BusyPoll:
    """Fault injection on the real producer: the first `busy` polls return at once without
    serving the delivery report, as poll() does when it serves other requests' callbacks."""

    def __init__(self, inner: Any, busy: int) -> None:
        self._inner = inner
        self.busy = busy
        self.polls = 0

    def poll(self, timeout: float) -> int:
        self.polls += 1
        if self.polls <= self.busy:
            return 0
        return int(self._inner.poll(timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_wait_is_bounded_by_time_not_poll_passes(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """Before the fix the wait counted (timeout + 1) / 0.05 = 60 passes for a 2 s timeout: 5,000
    fast polls gave a 503 for a write that then landed."""
    topic = make_topic("busy")
    producer = EventProducer(kafka_bootstrap, topic, timeout_s=2.0)
    busy = BusyPoll(producer._producer, busy=5_000)
    producer._producer = busy
    try:
        produced = producer.send({"op": "upsert", "id": "d1", "text": "lands"})
    finally:
        producer._producer = busy._inner
        producer.close()
    assert busy.polls > 5_000 and produced.offset == 0
    assert records_in(kafka_bootstrap, topic) == 1
