"""The documents topic is the source of truth (issue 15), on a real Kafka broker: freshrag
creates it log-compacted, the broker's log cleaner keeps every tenant's latest event under
the `{"id":..,"tenant":..}` keys, and the events of one document stay on one partition."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from freshrag.core.settings import load_settings
from freshrag.ingest.events import (
    Delete,
    RawRecord,
    RecordOrigin,
    Upsert,
    document_key,
    parse_record,
    upsert_event,
)
from freshrag.ingest.kafka_io import ensure_compacted, ensure_event_topics
from freshrag.ingest.producer import EventProducer, partition_for
from freshrag.retrieve.edge_store import EdgeStore
from tests.integration.harness import RunningFlow, index_state, wait_for

FILLER = b"filler"  # appended after segment.ms so the broker rolls the segment


def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=30)
    return {name: str(entry.value) for name, entry in entries.items()}


def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record still in the topic's partitions, read from the log start to the end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"r-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    out: list[Any] = []
    try:
        meta = consumer.list_topics(topic, timeout=10)
        for partition in meta.topics[topic].partitions:
            tp = TopicPartition(topic, partition)
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                out.append(msg)
                if msg.offset() >= high - 1:
                    break
            else:
                raise AssertionError(f"could not read {topic}/{partition} up to {high}")
    finally:
        consumer.close()
    return out


def latest_by_document(records: list[Any]) -> dict[tuple[str, str], list[str]]:
    """(tenant, doc_id) -> what the topic still holds for it: 'v<version>' or 'tombstone'."""
    seen: dict[tuple[str, str], list[str]] = {}
    for msg in records:
        if msg.key() == FILLER:
            continue
        origin = RecordOrigin(msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1])
        event = parse_record(RawRecord(msg.key(), msg.value(), origin))
        assert isinstance(event, Upsert | Delete), event
        what = "tombstone" if isinstance(event, Delete) else f"v{event.version}"
        seen.setdefault((event.tenant, event.doc_id), []).append(what)
    return seen


def test_compaction_keeps_every_tenants_latest_version(
    kafka_bootstrap: str, embedder: Any, tmp_path: Path
) -> None:
    """Three versions of `kb-1` for two tenants, and acme's `kb-2` deleted by a tombstone
    (globex's `kb-2` stays), through the real writer (EventProducer) while the real flow
    indexes them; then the broker's log cleaner compacts (aggressive settings: segments roll
    after 100 ms, any dirty ratio is cleanable). What is left is each tenant's latest version
    and the tombstone, and a rebuild from the compacted topic gives the live index again. The
    same writes under the old bare-id keys show why the key changed: there one tenant's
    document compacts the other's away."""
    topic = f"compacted-{uuid.uuid4().hex[:10]}"
    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        embed_batch_size=16,
        embed_max_wait_ms=50,
        metrics_port=0,
    )
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    config = {
        "cleanup.policy": "compact",
        "segment.ms": "100",
        "min.cleanable.dirty.ratio": "0.01",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "86400000",  # the tombstone itself stays
    }
    admin.create_topics([NewTopic(topic, 1, config=config)])[topic].result(timeout=30)
    producer = EventProducer(kafka_bootstrap, topic)
    raw = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    live_store = EdgeStore(tmp_path / "live", "freshrag")
    live_store.ensure_collection()
    indexed = {
        ("acme", "kb-1"): 3,
        ("globex", "kb-1"): 3,
        ("globex", "kb-2"): 1,
        ("acme", "legacy"): 5,
        ("globex", "legacy"): 4,
    }
    try:
        with RunningFlow(settings, live_store, embedder):
            for version in (1, 2, 3):
                for tenant in ("acme", "globex"):
                    producer.send(
                        upsert_event(
                            "kb-1", f"{tenant} policy, v{version}", tenant=tenant, version=version
                        )
                    )
            for tenant in ("acme", "globex"):
                producer.send(upsert_event("kb-2", f"{tenant} notes", tenant=tenant, version=1))
            # the old keys: the bare id, shared by both tenants
            for tenant, version in (("acme", 5), ("globex", 4)):
                event = upsert_event("legacy", f"{tenant} old", tenant=tenant, version=version)
                raw.produce(topic, key=b"legacy", value=json.dumps(event).encode())
            assert raw.flush(30) == 0
            wait_for(
                lambda: len(index_state(live_store)) == 6,
                what="6 documents indexed",
                show=lambda: index_state(live_store),
            )
            # a tombstone under acme's key deletes acme's kb-2 only
            raw.produce(topic, key=document_key("acme", "kb-2"), value=None)
            assert raw.flush(30) == 0
            wait_for(
                lambda: {k: v for k, (v, _) in index_state(live_store).items()} == indexed,
                what="acme's kb-2 deleted, the rest at its latest version",
                show=lambda: index_state(live_store),
            )
        before = latest_by_document(read_all(kafka_bootstrap, topic))
        assert before[("acme", "kb-1")] == ["v1", "v2", "v3"]  # nothing compacted yet

        expected = {
            ("acme", "kb-1"): ["v3"],
            ("globex", "kb-1"): ["v3"],
            ("acme", "kb-2"): ["tombstone"],
            ("globex", "kb-2"): ["v1"],
            ("globex", "legacy"): ["v4"],  # acme's later v5 is gone: it shared the key
        }
        seen: dict[tuple[str, str], list[str]] = before
        deadline = time.monotonic() + 120
        while seen != expected and time.monotonic() < deadline:
            time.sleep(1.0)
            raw.produce(topic, key=FILLER, value=b"roll")  # rolls the segment, cleaner runs
            assert raw.flush(30) == 0
            seen = latest_by_document(read_all(kafka_bootstrap, topic))
        assert seen == expected, f"not compacted as expected within 120 s: {seen}"

        # rebuild: a new index from the compacted topic's start
        rebuilt = EdgeStore(tmp_path / "rebuilt", "freshrag")
        rebuilt.ensure_collection()
        try:
            with RunningFlow(settings, rebuilt, embedder):
                wait_for(
                    lambda: len(index_state(rebuilt)) == 4,
                    what="the rebuild",
                    show=lambda: index_state(rebuilt),
                )
            got = {k: v for k, (v, _) in index_state(rebuilt).items()}
            assert got == {k: v for k, v in indexed.items() if k != ("acme", "legacy")}
        finally:
            rebuilt.close()
    finally:
        live_store.close()
        producer.close()
        admin.delete_topics([topic, settings.dlq_topic])


def test_the_documents_topic_freshrag_creates_is_compacted(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:10]
    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=f"docs-{suffix}",
        dlq_topic=f"docs-{suffix}.dlq",
        topic_delete_retention_ms=7_200_000,
        topic_min_compaction_lag_ms=60_000,
    )
    assert ensure_event_topics(settings, partitions=3) == "compacted"
    docs = topic_config(kafka_bootstrap, settings.topic)
    assert docs["cleanup.policy"] == "compact"
    assert docs["delete.retention.ms"] == "7200000"
    assert docs["min.compaction.lag.ms"] == "60000"
    dlq = topic_config(kafka_bootstrap, settings.dlq_topic)
    assert dlq["cleanup.policy"] == "delete"  # dead letters age out
    assert dlq["max.message.bytes"] == str(settings.dlq_max_message_bytes)
    # a second start finds it as it is
    assert ensure_event_topics(settings, partitions=3) == "compacted"
    AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics(
        [settings.topic, settings.dlq_topic]
    )


def test_an_existing_topic_that_is_not_compacted(
    kafka_bootstrap: str, make_topic: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    """By default it is left as it is, with a warning that names the command; with
    FRESHRAG_TOPIC_COMPACT_EXISTING it is converted, its other settings kept."""
    topic = make_topic("oldtopic")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    wanted = {"cleanup.policy": "compact", "delete.retention.ms": "3600000"}
    retention = ConfigEntry("retention.ms", "999999", incremental_operation=AlterConfigOpType.SET)
    keep = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[retention])
    admin.incremental_alter_configs([keep])[keep].result(timeout=30)

    with caplog.at_level(logging.WARNING, logger="freshrag.ingest.kafka"):
        assert ensure_compacted(kafka_bootstrap, topic, wanted, convert=False) == "not compacted"
    assert topic_config(kafka_bootstrap, topic)["cleanup.policy"] == "delete"
    warning = caplog.text
    assert "cleanup.policy=delete" in warning and "FRESHRAG_TOPIC_COMPACT_EXISTING" in warning
    assert f"--entity-name {topic} --add-config cleanup.policy=compact" in warning

    assert ensure_compacted(kafka_bootstrap, topic, wanted, convert=True) == "converted"
    after = topic_config(kafka_bootstrap, topic)
    assert after["cleanup.policy"] == "compact"
    assert after["delete.retention.ms"] == "3600000"
    assert after["retention.ms"] == "999999"  # an incremental change: the rest is kept
    assert ensure_compacted(kafka_bootstrap, topic, wanted, convert=False) == "compacted"


def test_a_documents_events_share_the_partition_its_bare_key_had(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """Writers before issue 15 keyed by the bare id (librdkafka's default partitioner placed
    it); EventProducer puts every tenant's events of that id on the same partition, so the
    version gate's offset tie-break still compares records of one partition."""
    topic = make_topic("parts", partitions=5)
    ids = ["kb-1", "kb-2", "guide/intro.md", "naïve", "42", "x" * 100]
    placed: dict[bytes, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None
        placed[msg.key()] = msg.partition()

    raw = Producer({"bootstrap.servers": kafka_bootstrap})
    for doc_id in ids:
        raw.produce(topic, key=doc_id.encode(), value=b"{}", on_delivery=delivered)
    assert raw.flush(30) == 0
    producer = EventProducer(kafka_bootstrap, topic)
    try:
        for doc_id in ids:
            for tenant in ("acme", "globex"):
                sent = producer.send(upsert_event(doc_id, "t", tenant=tenant))
                assert sent.partition == placed[doc_id.encode()] == partition_for(doc_id, 5)
    finally:
        producer.close()
    assert len(set(placed.values())) > 1  # the ids do spread over partitions
