"""Version order, tenant resolution and lost offsets: the flow on real Kafka, model and Edge."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from freshrag.core.settings import Settings, load_settings
from freshrag.ingest.events import DebeziumMapping
from freshrag.retrieve.contract import Store
from freshrag.retrieve.edge_store import EdgeStore
from tests.integration.harness import RunningFlow, event, index_state, produce, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


@pytest.fixture
def settings(kafka_bootstrap: str, make_topic: Any) -> Settings:
    topic = make_topic("sem", partitions=1)
    return load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        embed_batch_size=16,
        embed_max_wait_ms=50,
        metrics_port=0,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = EdgeStore(tmp_path / "index", "freshrag")
    s.ensure_collection()
    yield s
    s.close()


def texts(store: Store) -> dict[tuple[str, str], str]:
    return {(p["tenant"], p["doc_id"]): p["text"] for p in store.scroll_payloads()}


def debezium(op: str, before: Any, after: Any) -> bytes:
    return json.dumps({"op": op, "before": before, "after": after, "source": {}}).encode()


def test_a_delete_without_version_never_blocks_a_later_re_create(
    settings: Settings, store: Store, embedder: Any
) -> None:
    """POST v3, DELETE without a version, POST v4: v4 is indexed (it was dropped before)."""
    b, t = settings.kafka_bootstrap, settings.topic
    with RunningFlow(settings, store, embedder) as flow:
        produce(b, t, [event(op="upsert", id="kb", version=3, text="Version three text.")])
        wait_for(lambda: index_state(store) == {("default", "kb"): (3, 1)}, what="v3")
        produce(b, t, [event(op="delete", id="kb")])
        wait_for(lambda: index_state(store) == {}, what="deleted")
        produce(b, t, [event(op="upsert", id="kb", version=4, text="Version four is back.")])
        wait_for(lambda: index_state(store) == {("default", "kb"): (4, 1)}, what="v4 re-created")
        assert flow.counter("freshrag_ingest_events_total", op="upsert", outcome="stale") == 0


def test_debezium_delete_tombstone_then_insert_of_the_same_key(
    settings: Settings, store: Store, embedder: Any
) -> None:
    b, t = settings.kafka_bootstrap, settings.topic
    row3 = {"id": 7, "tenant": "acme", "version": 3, "text": "Row seven, version three."}
    row4 = {"id": 7, "tenant": "acme", "version": 4, "text": "Row seven is inserted again."}
    key = json.dumps({"id": 7}).encode()
    flow = RunningFlow(settings, store, embedder)
    flow.parts.mapping = DebeziumMapping(version_field="version")
    with flow:
        produce(b, t, [(key, debezium("c", None, row3))])
        wait_for(lambda: index_state(store) == {("acme", "7"): (3, 1)}, what="row inserted")
        produce(b, t, [(key, debezium("d", row3, None)), (key, None)])  # delete, then tombstone
        wait_for(lambda: index_state(store) == {}, what="row deleted")
        produce(b, t, [(key, debezium("c", None, row4))])
        wait_for(lambda: index_state(store) == {("acme", "7"): (4, 1)}, what="row re-inserted")
    assert "inserted again" in texts(store)[("acme", "7")]


def test_two_version_less_upserts_in_one_millisecond_keep_the_later(
    settings: Settings, store: Store, embedder: Any
) -> None:
    b, t = settings.kafka_bootstrap, settings.topic
    ts = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": b, "enable.idempotence": True})
    for text in ("The first write of this millisecond.", "The second write wins."):
        body = json.dumps({"op": "upsert", "id": "same-ms", "text": text}).encode()
        producer.produce(t, key=b"same-ms", value=body, timestamp=ts)
    assert producer.flush(30) == 0
    with RunningFlow(settings, store, embedder):
        wait_for(
            lambda: texts(store).get(("default", "same-ms"), "").startswith("The second"),
            what="the later write indexed",
            show=lambda: texts(store),
        )
    assert index_state(store) == {("default", "same-ms"): (ts, 1)}


def test_key_only_deletes_reach_the_rows_tenant_and_spare_the_default_tenant(
    settings: Settings, store: Store, embedder: Any
) -> None:
    """REPLICA IDENTITY DEFAULT `before` images and bare-key tombstones used to hit `default`."""
    b, t = settings.kafka_bootstrap, settings.topic
    row = {"id": 42, "tenant": "acme", "text": "Acme's row forty-two."}
    moving = {"id": 43, "tenant": "acme", "text": "Row forty-three starts at acme."}
    with RunningFlow(settings, store, embedder):
        produce(
            b,
            t,
            [
                event(op="upsert", id="42", text="A native default-tenant document 42."),
                event(op="upsert", id="43", text="A native default-tenant document 43."),
                (json.dumps({"id": 42}).encode(), debezium("c", None, row)),
                (json.dumps({"id": 43}).encode(), debezium("c", None, moving)),
            ],
        )
        wait_for(lambda: len(index_state(store)) == 4, what="4 documents")
        produce(
            b,
            t,
            [
                (json.dumps({"id": 42}).encode(), debezium("d", {"id": 42}, None)),
                # the row moves to another tenant: it leaves acme
                (
                    json.dumps({"id": 43}).encode(),
                    debezium("u", moving, {**moving, "tenant": "globex", "text": "Now globex."}),
                ),
            ],
        )
        wait_for(
            lambda: (
                set(index_state(store)) == {("default", "42"), ("default", "43"), ("globex", "43")}
            ),
            what="acme's rows gone, default's documents kept",
            show=lambda: sorted(index_state(store)),
        )
        produce(b, t, [(b"43", None)])  # a bare-key tombstone: the row's tenant (globex)
        wait_for(
            lambda: set(index_state(store)) == {("default", "42"), ("default", "43")},
            what="tombstone reached globex",
            show=lambda: sorted(index_state(store)),
        )


def test_a_recovery_offset_below_the_log_start_is_reported_not_skipped_silently(
    settings: Settings, store: Store, embedder: Any, tmp_path: Path, caplog: Any
) -> None:
    b, t = settings.kafka_bootstrap, settings.topic
    recovery = tmp_path / "recovery"
    produce(b, t, [event(op="upsert", id=f"a{i}", version=1, text=f"Early {i}.") for i in range(3)])
    with RunningFlow(settings, store, embedder, recovery_dir=recovery):
        wait_for(lambda: len(index_state(store)) == 3, what="first 3 indexed")
        time.sleep(1.5)  # let an epoch snapshot the offsets
    produce(b, t, [event(op="upsert", id=f"b{i}", version=1, text=f"Late {i}.") for i in range(6)])
    # retention passes over offsets 3..5 before the flow comes back (log start -> 6)
    admin = AdminClient({"bootstrap.servers": b})
    futures = admin.delete_records([TopicPartition(t, 0, 6)])
    for future in futures.values():
        future.result(timeout=30)
    caplog.set_level(logging.ERROR, logger="freshrag.ingest.kafka")
    with RunningFlow(settings, store, embedder, recovery_dir=recovery) as flow:
        wait_for(lambda: len(index_state(store)) == 6, what="records after the gap indexed")
        lost = flow.counter("freshrag_ingest_offsets_lost_total", topic=t, partition="0")
    assert lost == 3
    assert any("below the log start" in r.getMessage() for r in caplog.records)
    assert {k[1] for k in index_state(store)} == {"a0", "a1", "a2", "b3", "b4", "b5"}


BUFFERED = ["b0", "b2", "b9"]  # one embedding bucket (crc32 % 4), with "after5"
OTHER_BUCKET = ["b1", "b3", "b8", "after4"]  # another bucket


@pytest.mark.slow
def test_records_buffered_at_a_crash_hold_the_watermark_until_rewritten(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    """kill -9 while records wait in the embedding buffer (snapshotted, so not read again):
    after the restart, the published watermark must not pass them before they are indexed."""
    import os
    import signal
    import subprocess
    import sys

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from tests.conftest import ROOT, free_port

    topic = make_topic("ryw", partitions=1)
    index, recovery = tmp_path / "index", tmp_path / "recovery"

    def start() -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        env = {
            **os.environ,
            "FRESHRAG_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "FRESHRAG_TOPIC": topic,
            "FRESHRAG_DLQ_TOPIC": f"{topic}.dlq",
            "FRESHRAG_INDEX_PATH": str(index),
            "FRESHRAG_METRICS_PORT": str(port),
            # records sit in the buffer across the kill; the 4th fills the batch
            "FRESHRAG_EMBED_MAX_WAIT_MS": "60000",
            "FRESHRAG_EMBED_BATCH_SIZE": "4",
        }
        env.pop("FRESHRAG_QDRANT_URL", None)
        env.pop("QDRANT_URL", None)
        log = (tmp_path / f"ingest-{port}.log").open("w")
        args = [sys.executable, "-m", "freshrag.cli", "ingest", "-r", str(recovery), "-s", "0.3"]
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log), port

    def applied(port: int) -> float:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return -1
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "freshrag_ingest_events_total"
                    and sample.labels.get("outcome") == "applied"
                ):
                    total += sample.value
        return total

    def reading(port: int) -> bool:
        """The flow runs (the metrics server comes up before the model is loaded)."""
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return False
        return "freshrag_ingest_source_offset{" in text

    def watermark() -> int:
        return EdgeStore(index, "freshrag").load_watermarks(topic).get("0", 0)

    first, port = start()
    try:
        produce(
            kafka_bootstrap,
            topic,
            [event(op="upsert", id=b, version=1, text=f"Buffered {b}.") for b in BUFFERED],
        )
        wait_for(lambda: reading(port), timeout=120, what="first ingest reading")
        time.sleep(1.5)  # read and snapshotted (every 0.3 s), still inside the buffer
        assert applied(port) == 0
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert watermark() == 0  # nothing was indexed before the crash

    second, port = start()
    violations: list[tuple[int, float]] = []

    def check(seconds: float, until: int) -> None:
        """Every record below the published watermark must be indexed (none was before the
        crash, and each is an upsert of its own document)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            mark, done = watermark(), applied(port)
            if mark > done:
                violations.append((mark, done))
            if mark >= until:
                return
            time.sleep(0.05)

    try:
        wait_for(lambda: reading(port), timeout=120, what="second ingest reading")
        # another bucket: a full batch of 4, indexed at once, while the restored 3 still wait
        produce(
            kafka_bootstrap,
            topic,
            [event(op="upsert", id=d, version=1, text=f"New {d}.") for d in OTHER_BUCKET],
        )
        wait_for(lambda: applied(port) >= 4, timeout=120, what="the other bucket indexed")
        check(3.0, until=99)
        # the restored bucket's 4th record completes its batch
        produce(kafka_bootstrap, topic, [event(op="upsert", id="after5", version=1, text="N.")])
        check(60.0, until=8)
        assert watermark() == 8, "everything is indexed in the end"
        read = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        assert "freshrag_ingest_records_read_total 5.0" in read, read
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    assert violations == []
    want = {("default", b) for b in [*BUFFERED, *OTHER_BUCKET, "after5"]}
    assert set(index_state_of(index)) == want


def index_state_of(index: Path) -> dict[tuple[str, str], tuple[int, int]]:
    store = EdgeStore(index, "freshrag")
    try:
        return index_state(store)
    finally:
        store.close()


def test_the_gate_forgets_deleted_documents_after_the_retention(
    kafka_bootstrap: str, make_topic: Any, store: Store, embedder: Any
) -> None:
    """Bounded state on the real dataflow: a deleted document's key leaves the gate state once
    its retention passes (a timer, with no further event for it); a live one stays."""
    topic = make_topic("retention", partitions=1)
    short = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        embed_max_wait_ms=50,
        metrics_port=0,
        delete_retention_s=1.0,
    )
    with RunningFlow(short, store, embedder) as flow:
        produce(
            kafka_bootstrap,
            topic,
            [
                event(op="upsert", id="live", version=1, text="Stays."),
                event(op="upsert", id="gone", version=1, text="Goes."),
                event(op="delete", id="gone", version=2),
            ],
        )
        wait_for(lambda: set(index_state(store)) == {("default", "live")}, what="indexed")
        assert flow.counter("freshrag_ingest_gate_documents") == 2
        wait_for(
            lambda: flow.counter("freshrag_ingest_gate_documents") == 1,
            timeout=30,
            what="the deleted document forgotten",
        )
        # the live document's entry is still there: a replayed old upsert is still dropped
        produce(kafka_bootstrap, topic, [event(op="upsert", id="live", version=1, text="Old.")])
        wait_for(
            lambda: flow.counter("freshrag_ingest_events_total", op="upsert", outcome="stale") == 1,
            what="replayed live upsert dropped by the gate",
        )
    assert index_state(store) == {("default", "live"): (1, 1)}


def test_a_kill_during_recovery_initialisation_does_not_wedge_later_starts(
    tmp_path: Path,
) -> None:
    """A partition file left empty by a kill used to fail every start ("No recovery
    partitions found"); it is rebuilt, and a complete one is kept as it is."""
    from datetime import timedelta

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.run import cli_main
    from bytewax.testing import TestingSink, TestingSource

    from freshrag.ingest.runner import IngestOptions, prepare_recovery

    recovery = tmp_path / "recovery"
    recovery.mkdir()
    (recovery / "part-0.sqlite3").touch()  # what a kill inside init_db_dir leaves
    opts = IngestOptions(recovery_dir=recovery)
    config = prepare_recovery(opts)
    out: list[int] = []
    flow = Dataflow("wedge")
    op.output("out", op.input("in", flow, TestingSource([1, 2, 3])), TestingSink(out))
    cli_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=config)
    assert out == [1, 2, 3]
    before = (recovery / "part-0.sqlite3").stat()
    prepare_recovery(opts)  # a complete partition (now with snapshots) is left alone
    after = (recovery / "part-0.sqlite3").stat()
    assert (before.st_ino, before.st_size) == (after.st_ino, after.st_size)
    assert not (recovery / ".init").exists()
