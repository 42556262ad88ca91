"""The embed lanes on the real flow: a small update produced right after a large document is
written before it, and later records of a large document's key still apply in order."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freshrag.core.settings import Settings, load_settings
from freshrag.ingest.indexing import IndexWrite, WriteDelete, WriteUpsert
from freshrag.retrieve.contract import Store
from freshrag.retrieve.edge_store import EdgeStore
from tests.integration.harness import RunningFlow, event, index_state, produce, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

# about 40 chunks of 200 tokens: seconds of embedding on 2 cores
LARGE_TEXT = " ".join(
    f"Paragraph {i} of the maintenance manual describes torque values, inspection intervals, "
    f"lubricant grades and the replacement schedule for assembly {i}."
    for i in range(400)
)


@pytest.fixture
def settings(kafka_bootstrap: str, make_topic: Any) -> Settings:
    topic = make_topic("lanes", partitions=1)  # one partition: the small one is behind in Kafka
    return load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        embed_batch_size=16,
        embed_max_wait_ms=50,
        embed_background_min_chunks=8,
        metrics_port=0,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = EdgeStore(tmp_path / "index", "freshrag")
    s.ensure_collection()
    yield s
    s.close()


def test_a_small_update_is_not_stuck_behind_a_large_document(
    settings: Settings, store: Store, embedder: Any
) -> None:
    written: list[IndexWrite] = []
    with RunningFlow(settings, store, embedder) as flow:
        flow.parts.listener = written.extend
        produce(
            settings.kafka_bootstrap,
            settings.topic,
            [
                event(op="upsert", id="manual", version=1, title="Manual", text=LARGE_TEXT),
                event(op="upsert", id="note", version=1, title="Note", text="Gate B is closed."),
            ],
        )
        wait_for(lambda: len(index_state(store)) == 2, what="both documents indexed", timeout=180)
        order = [w.event.doc_id for w in written]
        assert order.index("note") < order.index("manual"), order
        state = index_state(store)
        assert state[("default", "manual")][1] >= 20  # really large: many chunks
        assert flow.metrics.background_records._value.get() >= 1


def test_records_behind_a_large_document_keep_their_order(
    settings: Settings, store: Store, embedder: Any
) -> None:
    written: list[IndexWrite] = []
    with RunningFlow(settings, store, embedder) as flow:
        flow.parts.listener = written.extend
        produce(
            settings.kafka_bootstrap,
            settings.topic,
            [
                event(op="upsert", id="gone", version=1, title="Gone", text=LARGE_TEXT),
                event(op="delete", id="gone", version=2),
                event(op="upsert", id="grown", version=1, title="Grown", text=LARGE_TEXT),
                event(op="upsert", id="grown", version=2, title="Grown", text="Now short."),
                event(op="upsert", id="marker", version=1, title="Marker", text="Last one."),
            ],
        )
        wait_for(
            lambda: (
                any(isinstance(w, WriteDelete) and w.event.doc_id == "gone" for w in written)
                and any(
                    isinstance(w, WriteUpsert)
                    and w.event.doc_id == "grown"
                    and w.event.version == 2
                    for w in written
                )
            ),
            what="the later records of both large documents applied",
            timeout=240,
        )
    state = index_state(store)
    assert ("default", "gone") not in state
    assert state[("default", "grown")] == (2, 1)
    assert ("default", "marker") in state


def test_a_stop_past_the_drain_time_leaves_the_backlog_to_the_next_start(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path, store: Store, embedder: Any
) -> None:
    """SIGTERM must not wait for a backlog: records still buffered when `stop_drain_s` has
    passed stay in the recovery snapshot, and the next start writes them."""
    topic = make_topic("drain", partitions=1)
    base = {
        "kafka_bootstrap": kafka_bootstrap,
        "topic": topic,
        "dlq_topic": f"{topic}.dlq",
        "metrics_port": 0,
        "stop_drain_s": 0.0,
    }
    # the buffer never fills and never times out: only the stop can end this batch
    held = load_settings(**base, embed_batch_size=4096, embed_max_wait_ms=60_000)
    docs = [
        event(op="upsert", id=f"d{i}", version=1, title="T", text=f"Fact {i}.") for i in range(30)
    ]
    recovery = tmp_path / "recovery"
    with RunningFlow(held, store, embedder, recovery_dir=recovery) as flow:
        produce(kafka_bootstrap, topic, docs)
        wait_for(
            lambda: flow.counter("freshrag_ingest_records_read_total") >= len(docs),
            what="the flow read every record",
        )
    assert index_state(store) == {}  # nothing was written: the stop did not drain 30 records

    quick = load_settings(**base, embed_max_wait_ms=50)
    with RunningFlow(quick, store, embedder, recovery_dir=recovery):
        wait_for(lambda: len(index_state(store)) == len(docs), what="the backlog written")


def test_the_background_lane_yields_the_model_to_a_small_batch(embedder: Any) -> None:
    """While the model is busy, a large document's call (background lane) and then a small
    batch's call start waiting: the small batch runs first, though it came second."""
    long_texts = [f"section {i} on torque values and inspection intervals " * 20 for i in range(60)]
    trace: list[tuple[str, int]] = []

    def busy() -> None:
        embedder.embed_documents(long_texts)  # one model call: the others must wait for it

    def large() -> None:
        with embedder.background_lane():
            embedder.embed_documents(long_texts[:40])

    sub_batch, embedder.sub_batch_size = embedder.sub_batch_size, 1000
    embedder.on_encode = lambda kind, n: trace.append((kind, n))
    try:
        first = threading.Thread(target=busy)
        first.start()
        wait_for(lambda: ("documents_wait", 60) in trace, what="the model busy")
        second = threading.Thread(target=large)
        second.start()
        wait_for(lambda: ("documents_wait", 40) in trace, what="the large document waiting")
        assert ("documents", 60) not in trace, "the first call ended too early for this test"
        embedder.embed_documents(["Gate B is closed.", "Lift 3 works.", "Ramp open."])
        first.join(timeout=600)
        second.join(timeout=600)
    finally:
        embedder.on_encode = None
        embedder.sub_batch_size = sub_batch
    ran = [n for kind, n in trace if kind == "documents"]
    assert ran == [60, 3, 40], trace
