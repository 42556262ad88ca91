"""Changes cost only what changed, on real Kafka, the real model and real Qdrant (Edge and
server): a one-sentence edit of a 40-chunk manual re-embeds a few chunks and keeps the others'
vectors; a metadata-only change and an `acl`-only change patch payloads without embedding; a
patch cut short by a crash converges on replay."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freshrag.core.settings import Settings, load_settings
from freshrag.ingest.chunking import stored_chunk_embedding_text
from freshrag.ingest.events import encode_event, upsert_event
from freshrag.retrieve.contract import SearchFilter, Store, point_id
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.server_store import QdrantServerStore
from tests.integration.harness import RunningFlow, produce, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

WORDS = "valve pump seal rotor gauge pressure flow coolant torque bolt filter tank".split()


def manual(sections: int = 10) -> str:
    """About 40 chunks at 200 tokens: sections of paragraphs, like a real manual."""
    out = []
    for s in range(sections):
        out.append(f"## Part {s}")
        for p in range(4):
            sentences = [
                f"Step {s}.{p}.{i}: check the {WORDS[(s + p + i) % len(WORDS)]} "
                f"of line {s}{p}{i} before the {WORDS[(s * p + i) % len(WORDS)]} test."
                for i in range(9)
            ]
            out.append(" ".join(sentences))
    return "\n\n".join(out)


@pytest.fixture(params=["edge", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "edge":
        s: Store = EdgeStore(tmp_path / "index", "freshrag")
    else:
        url, key = request.getfixturevalue("qdrant_server")
        s = QdrantServerStore.from_url(url, key, f"incr{uuid.uuid4().hex[:8]}")
    s.ensure_collection()
    yield s
    s.close()


@pytest.fixture
def settings(kafka_bootstrap: str, make_topic: Any) -> Settings:
    topic = make_topic("incr", partitions=1)
    return load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        embed_max_wait_ms=50,
        metrics_port=0,
    )


def send(settings: Settings, **fields: Any) -> None:
    produce(settings.kafka_bootstrap, settings.topic, [encode_event(upsert_event(**fields))])


def points(store: Store) -> dict[int, dict[str, Any]]:
    return {int(p["chunk_index"]): p for p in store.scroll_payloads("t")}


def embedded(flow: RunningFlow) -> float:
    return flow.counter("freshrag_ingest_embed_batch_chunks_sum")


def test_edits_reembed_only_what_changed(settings: Settings, store: Store, embedder: Any) -> None:
    text = manual()
    with RunningFlow(settings, store, embedder) as flow:
        send(settings, doc_id="m", tenant="t", version=1, title="Pump manual", text=text)
        wait_for(lambda: store.document_versions("t", ["m"]) == {"m": 1}, what="v1 indexed")
        v1 = points(store)
        full = embedded(flow)
        assert full == len(v1) and 35 <= len(v1) <= 60, len(v1)

        # one sentence edited in the middle
        edited = text.replace("Step 5.2.4: check the", "Step 5.2.4: first drain, then check the")
        assert edited != text
        send(settings, doc_id="m", tenant="t", version=2, title="Pump manual", text=edited)
        wait_for(lambda: store.document_versions("t", ["m"]) == {"m": 2}, what="v2 indexed")
        v2 = points(store)
        reembedded = embedded(flow) - full
        assert 1 <= reembedded <= 3, reembedded
        assert flow.counter("freshrag_ingest_chunks_reused_total") == len(v2) - reembedded
        assert all(p["version"] == 2 for p in v2.values())
        changed = [i for i in v2 if v2[i]["chunk_hash"] != v1.get(i, {}).get("chunk_hash")]
        assert 1 <= len(changed) <= 3 and any("first drain" in v2[i]["text"] for i in changed)
        stored = store.chunk_vectors("t", ["m"])
        assert set(stored) == {p["chunk_hash"] for p in v2.values()}
        for i in changed:  # the new chunk's vector is the model's for its exact text
            p = v2[i]
            want = embedder.embed_documents(
                [stored_chunk_embedding_text(p["title"], p["heading"], p["text"], embedder)]
            )[0]
            got = stored[p["chunk_hash"]][0]
            assert sum(a * b for a, b in zip(want, got, strict=True)) > 0.999

        # metadata only, then acl only: payload patches, nothing embedded
        before = embedded(flow)
        send(settings, doc_id="m", tenant="t", version=3, title="Pump manual", text=edited,
             metadata={"team": "ops"}, url="https://docs.example/m")  # fmt: skip
        wait_for(lambda: store.document_versions("t", ["m"]) == {"m": 3}, what="v3 patched")
        v3 = points(store)
        assert embedded(flow) == before
        assert flow.counter("freshrag_ingest_payload_patches_total") == 1
        assert {p["chunk_hash"] for p in v3.values()} == {p["chunk_hash"] for p in v2.values()}
        assert all(p["metadata"] == {"team": "ops"} and p["version"] == 3 for p in v3.values())
        assert all(p["url"] == "https://docs.example/m" for p in v3.values())
        hits = store.query_dense(
            embedder.embed_query("first drain then check"),
            SearchFilter("t", metadata_equals={"team": "ops"}),
            3,
        )
        assert hits and hits[0].doc_id == "m"

        send(settings, doc_id="m", tenant="t", version=4, title="Pump manual", text=edited,
             metadata={"team": "ops"}, url="https://docs.example/m",
             acl={"users": ["alice"]})  # fmt: skip
        wait_for(lambda: store.document_versions("t", ["m"]) == {"m": 4}, what="v4 patched")
        assert embedded(flow) == before
        assert flow.counter("freshrag_ingest_payload_patches_total") == 2
        assert all(p["acl"] == ["user:alice"] for p in points(store).values())


def test_an_interrupted_patch_converges_on_replay(
    settings: Settings, store: Store, embedder: Any
) -> None:
    """Fault injection: the store fails the patch after the first call; the replay finds
    mixed versions of the same content and patches again, embedding nothing."""
    text = manual(3)
    with RunningFlow(settings, store, embedder):
        send(settings, doc_id="m", tenant="t", version=1, title="Manual", text=text)
        wait_for(lambda: store.document_versions("t", ["m"]) == {"m": 1}, what="v1 indexed")
    v1 = points(store)
    half = sorted(v1)[: len(v1) // 2]
    for i in half:  # what a patch cut short leaves: some points at v2, the rest at v1
        _patch_point(store, point_id("t", "m", i), {"version": 2, "metadata": {"k": "v"}})
    assert {p["version"] for p in points(store).values()} == {1, 2}
    with RunningFlow(settings, store, embedder) as flow:
        send(settings, doc_id="m", tenant="t", version=2, title="Manual", text=text,
             metadata={"k": "v"})  # fmt: skip
        wait_for(lambda: {p["version"] for p in points(store).values()} == {2}, what="converged")
        assert embedded(flow) == 0
    after = points(store)
    assert set(after) == set(v1) and all(p["metadata"] == {"k": "v"} for p in after.values())


def _patch_point(store: Store, pid: str, payload: dict[str, Any]) -> None:
    """Set payload on one point (a partial patch), through the backend's own client."""
    if isinstance(store, EdgeStore):
        import qdrant_edge as qe

        store._write(qe.UpdateOperation.set_payload([pid], payload))
    else:
        assert isinstance(store, QdrantServerStore)
        store.client.set_payload(store.collection, payload=payload, points=[pid], wait=True)
