"""The ingest dataflow on real Kafka, the real embedder and a real Qdrant Edge store."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freshrag.core.settings import Settings, load_settings
from freshrag.core.sparse import Bm25Encoder
from freshrag.retrieve.contract import SearchFilter, Store
from freshrag.retrieve.edge_store import EdgeStore
from tests.integration.harness import (
    RunningFlow,
    event,
    index_state,
    produce,
    read_topic,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

LONG_TEXT = "\n\n".join(
    f"Section {i}. The refund policy for enterprise customers covers hardware returns, "
    f"shipping costs and partial credits under clause {i}. " * 3
    for i in range(12)
)


@pytest.fixture
def settings(kafka_bootstrap: str, make_topic: Any) -> Settings:
    topic = make_topic("docs", partitions=1)
    return load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        embed_batch_size=32,
        embed_max_wait_ms=50,
        metrics_port=0,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = EdgeStore(tmp_path / "index", "freshrag")
    s.ensure_collection()
    yield s
    s.close()


def top_doc(store: Store, embedder: Any, text: str, tenant: str = "default") -> str | None:
    hits = store.query_dense(embedder.embed_query(text), SearchFilter(tenant=tenant), 1)
    return hits[0].doc_id if hits else None


def test_upsert_shrink_delete_and_tombstone(
    settings: Settings, store: Store, embedder: Any
) -> None:
    b, t = settings.kafka_bootstrap, settings.topic
    with RunningFlow(settings, store, embedder) as flow:
        produce(
            b,
            t,
            [
                event(op="upsert", id="refunds", version=1, title="Refunds", text=LONG_TEXT),
                event(
                    op="upsert",
                    id="cats",
                    version=1,
                    title="Cats",
                    text="Cats sleep sixteen hours a day.",
                ),
                event(
                    op="upsert",
                    id="tax",
                    version=1,
                    title="Tax",
                    text="Corporate tax filings are due in April.",
                ),
            ],
        )
        wait_for(lambda: len(index_state(store)) == 3, what="3 documents indexed")
        state = index_state(store)
        assert state[("default", "refunds")][1] > 3  # long document -> several chunks
        assert top_doc(store, embedder, "how long do cats sleep?") == "cats"
        assert top_doc(store, embedder, "enterprise hardware refund clause") == "refunds"
        assert (
            store.query_sparse(
                Bm25Encoder().embed_query("April filings"), SearchFilter("default"), 1
            )[0].doc_id
            == "tax"
        )

        # an update that makes the document shorter leaves no chunk of the old version
        produce(
            b,
            t,
            [
                event(
                    op="upsert",
                    id="refunds",
                    version=2,
                    title="Refunds",
                    text="Refunds are no longer offered.",
                )
            ],
        )
        wait_for(
            lambda: index_state(store).get(("default", "refunds")) == (2, 1),
            what="shrunk refunds v2",
        )
        payloads = [p for p in store.scroll_payloads("default") if p["doc_id"] == "refunds"]
        assert [p["text"] for p in payloads] == ["Refunds are no longer offered."]

        # a delete removes all of it; a tombstone (null value) removes by key
        produce(b, t, [event(op="delete", id="refunds", version=3), (b"cats", None)])
        wait_for(lambda: set(index_state(store)) == {("default", "tax")}, what="deletes applied")
        assert flow.counter("freshrag_ingest_events_total", op="delete", outcome="applied") == 2


def test_out_of_order_versions_and_replay_change_nothing(
    settings: Settings, store: Store, embedder: Any
) -> None:
    b, t = settings.kafka_bootstrap, settings.topic
    events = [
        event(op="upsert", id="doc", version=3, text="Version three is the current text."),
        event(op="upsert", id="doc", version=1, text="Version one is old."),
        event(op="upsert", id="doc", version=2, text="Version two is old too."),
        event(op="upsert", id="other", tenant="acme", version=5, text="Another tenant's document."),
        event(op="upsert", id="gone", version=1, text="Soon deleted."),
        event(op="delete", id="gone", version=2),
        event(op="upsert", id="gone", version=1, text="A stale resurrection attempt."),
    ]
    with RunningFlow(settings, store, embedder) as flow:
        produce(b, t, events)
        wait_for(
            lambda: flow.counter("freshrag_ingest_events_total", op="upsert", outcome="stale") >= 3,
            what="stale events dropped",
        )
        wait_for(
            lambda: index_state(store) == {("default", "doc"): (3, 1), ("acme", "other"): (5, 1)},
            what="final state",
        )
        before = sorted(
            store.scroll_payloads(), key=lambda p: (p["tenant"], p["doc_id"], p["chunk_index"])
        )
        count_before = store.count()
        # replay the whole topic a second time
        produce(b, t, events)
        wait_for(
            lambda: flow.counter("freshrag_ingest_events_total", op="upsert", outcome="stale") >= 8,
            what="replayed events dropped",
        )
    after = sorted(
        store.scroll_payloads(), key=lambda p: (p["tenant"], p["doc_id"], p["chunk_index"])
    )
    assert store.count() == count_before
    assert after == before  # same payloads, including indexed_at: nothing was rewritten
    assert after[0]["text"] == "Another tenant's document." and after[1]["version"] == 3


def test_replay_into_fresh_flow_state_skips_indexed_versions(
    settings: Settings, store: Store, embedder: Any
) -> None:
    """With the flow state lost (no recovery), the index itself stops re-writes of old versions."""
    b, t = settings.kafka_bootstrap, settings.topic
    produce(
        b,
        t,
        [event(op="upsert", id=f"d{i}", version=7, text=f"Document number {i}.") for i in range(5)],
    )
    with RunningFlow(settings, store, embedder):
        wait_for(lambda: len(index_state(store)) == 5, what="5 docs")
    before = sorted(store.scroll_payloads(), key=lambda p: p["doc_id"])
    with RunningFlow(settings, store, embedder) as flow:  # reads the topic from the beginning again
        wait_for(
            lambda: (
                flow.counter("freshrag_ingest_events_total", op="upsert", outcome="skipped_indexed")
                == 5
            ),
            what="replay skipped",
        )
    assert sorted(store.scroll_payloads(), key=lambda p: p["doc_id"]) == before


def test_debezium_events_through_field_mapping(
    settings: Settings, store: Store, embedder: Any
) -> None:
    from freshrag.ingest.events import DebeziumMapping

    def env(op: str, before: Any, after: Any, wrapped: bool = False) -> tuple[bytes, bytes]:
        payload = {
            "op": op,
            "before": before,
            "after": after,
            "source": {"table": "articles"},
            "ts_ms": 1,
        }
        body = {"schema": {"type": "struct"}, "payload": payload} if wrapped else payload
        row = after or before
        return json.dumps({"article_id": row["article_id"]}).encode(), json.dumps(body).encode()

    r1 = {
        "article_id": 1,
        "headline": "Snapshot row",
        "body": "Penguins live in Antarctica.",
        "lang": "en",
        "rev": 1,
    }
    r2 = {
        "article_id": 2,
        "headline": "Created",
        "body": "Volcanoes erupt molten lava.",
        "lang": "en",
        "rev": 1,
    }
    r2u = {**r2, "body": "Volcanoes are dormant most of the time.", "rev": 2}
    r3 = {
        "article_id": 3,
        "headline": "To delete",
        "body": "Temporary row.",
        "lang": "fr",
        "rev": 1,
    }
    flow = RunningFlow(settings, store, embedder)
    flow.parts.mapping = DebeziumMapping(
        id_field="article_id",
        text_field="body",
        title_field="headline",
        version_field="rev",
        metadata_fields=["lang"],
        updated_at_field=None,
    )
    b, t = settings.kafka_bootstrap, settings.topic
    with flow:
        produce(
            b,
            t,
            [
                env("r", None, r1),
                env("c", None, r2, wrapped=True),
                env("c", None, r3),
                env("u", r2, r2u),
                env("d", r3, None),
            ],
        )
        wait_for(
            lambda: index_state(store) == {("default", "1"): (1, 1), ("default", "2"): (2, 1)},
            what="debezium state",
            timeout=30,
            show=lambda: (
                index_state(store),
                flow.metrics.registry.get_sample_value(
                    "freshrag_ingest_dead_letters_total",
                    {"error_class": "MissingField", "step": "parse"},
                ),
            ),
        )
    texts = {p["doc_id"]: p for p in store.scroll_payloads()}
    assert texts["2"]["text"] == "Volcanoes are dormant most of the time."
    assert texts["1"]["title"] == "Snapshot row" and texts["1"]["metadata"] == {"lang": "en"}
    assert texts["1"]["source"] == "debezium"


def test_bad_events_land_in_dlq_and_good_ones_are_indexed(
    settings: Settings, store: Store, embedder: Any
) -> None:
    settings = settings.model_copy(update={"max_document_bytes": 5_000})
    bad: list[tuple[bytes | None, bytes | None, str]] = [
        (b"b1", b"{not json", "InvalidJSON"),
        (b"b2", b"\xff\xfe\x00\x01", "InvalidEncoding"),
        (b"b3", json.dumps({"op": "upsert", "text": "no id"}).encode(), "MissingField"),
        (b"b4", json.dumps({"op": "upsert", "id": "b4"}).encode(), "MissingField"),
        (b"b5", json.dumps({"op": "upsert", "id": "b5", "text": ["a"]}).encode(), "WrongType"),
        (
            b"b6",
            json.dumps({"op": "upsert", "id": "b6", "text": "x", "version": "v1"}).encode(),
            "WrongType",
        ),
        (
            b"b7",
            json.dumps({"op": "upsert", "id": "b7", "text": "big " * 2000}).encode(),
            "DocumentTooLarge",
        ),
        (b"b8", json.dumps({"op": "rename", "id": "b8", "text": "x"}).encode(), "UnknownOp"),
        (b"b9", json.dumps([1, 2, 3]).encode(), "WrongType"),
        (None, None, "MissingKey"),
        (
            b"b11",
            json.dumps({"op": "upsert", "id": "b11", "text": "x", "updated_at": "soon"}).encode(),
            "InvalidTimestamp",
        ),
    ]
    good = [
        event(op="upsert", id=f"good{i}", text=f"Good document {i} about rivers.") for i in range(3)
    ]
    records = [
        good[0],
        *[(k, v) for k, v, _ in bad[:5]],
        good[1],
        *[(k, v) for k, v, _ in bad[5:]],
        good[2],
    ]
    with RunningFlow(settings, store, embedder) as flow:
        produce(settings.kafka_bootstrap, settings.topic, records)
        dlq = read_topic(settings.kafka_bootstrap, settings.dlq_topic, expected=len(bad))
        wait_for(lambda: len(index_state(store)) == 3, what="good docs indexed")
        assert (
            flow.counter(
                "freshrag_ingest_dead_letters_total", error_class="InvalidJSON", step="parse"
            )
            == 1
        )
    assert {k for k, _ in index_state(store)} == {"default"}
    assert {d for _, d in index_state(store)} == {"good0", "good1", "good2"}
    assert len(dlq) == len(bad)
    by_offset = sorted(dlq, key=lambda m: int(dict(m.headers())["freshrag.source.offset"]))
    expected_offsets = [i for i, r in enumerate(records) if r not in good]
    for msg, (key, value, error_class), offset in zip(
        by_offset, bad, expected_offsets, strict=True
    ):
        headers = dict(msg.headers())
        assert msg.key() == key and msg.value() == value  # original bytes
        assert headers["freshrag.error.class"].decode() == error_class
        assert headers["freshrag.error.step"] == b"parse"
        assert headers["freshrag.source.topic"].decode() == settings.topic
        assert int(headers["freshrag.source.offset"]) == offset
        assert headers["freshrag.error.message"]


def test_chunker_with_the_real_tokenizer(embedder: Any) -> None:
    from freshrag.ingest.chunking import chunk_document, embedding_text

    text = "# Guide\n\n## Setup\n\n" + LONG_TEXT + "\n\n## Usage\n\n" + "Run it. " * 400
    chunks = chunk_document(text, "Handbook", embedder, max_tokens=120, overlap=20)
    assert {c.headings for c in chunks} == {("Guide", "Setup"), ("Guide", "Usage")}
    for c in chunks:
        assert embedder.count_tokens([c.text])[0] <= 120
        assert embedder.count_tokens([embedding_text(c)])[0] <= embedder.max_tokens
    setup = [c for c in chunks if c.headings[-1] == "Setup"]
    for prev, nxt in itertools.pairwise(setup):
        tail = prev.text.split()[-3:]
        assert " ".join(tail) in nxt.text[: len(" ".join(prev.text.split()[-25:])) + 5]
