"""Index generations on both backends: Edge (files) and a real Qdrant server (collections,
metadata, alias) behave alike; a generation of another dimension works; re-embedding stored
payloads reproduces exactly what ingest wrote."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from freshrag.core.settings import load_settings
from freshrag.core.sparse import Bm25Encoder
from freshrag.ingest.events import RecordOrigin, Upsert
from freshrag.ingest.index_writer import apply_writes
from freshrag.ingest.indexing import ChunkingConfig, DocumentIndexer
from freshrag.reindex import reembed_payloads
from freshrag.retrieve.catalog import EdgeCatalog, ServerCatalog
from freshrag.retrieve.contract import ChunkPoint, SearchFilter, SparseVector
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.generations import Catalog, generation_name, manifest_for
from freshrag.retrieve.server_store import QdrantServerStore
from freshrag.retrieve.stores import open_store

pytestmark = [pytest.mark.integration]


@pytest.fixture(params=["edge", "server"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Catalog, Any]]:
    """(kind, catalog, open(name, dim) -> store) on one backend, with a unique collection."""
    collection = f"cat{uuid.uuid4().hex[:8]}"
    if request.param == "edge":

        def open_edge(name: str, dim: int = 384) -> Any:
            return EdgeStore(tmp_path, name, dense_dim=dim)

        yield "edge", EdgeCatalog(tmp_path, collection), open_edge
        return
    url, key = request.getfixturevalue("qdrant_server")
    client = QdrantClient(url=url, api_key=key, check_compatibility=False)

    def open_server(name: str, dim: int = 384) -> Any:
        return QdrantServerStore.from_url(url, key, name, dense_dim=dim)

    catalog = ServerCatalog(client, collection)
    try:
        yield "server", catalog, open_server
    finally:
        for name in catalog.generations():
            client.delete_collection(name)
        client.close()


def point(doc: str, dim: int) -> ChunkPoint:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    vec = [0.0] * dim
    vec[0] = 1.0
    return ChunkPoint(
        "t", doc, 1, 0, 1, f"text of {doc}", doc, None, None, now, now, {}, vec,
        SparseVector([1], [1.0]),
    )  # fmt: skip


def test_generations_manifests_and_the_serving_pointer(backend: tuple[str, Catalog, Any]) -> None:
    _kind, catalog, open_gen = backend
    c = catalog.collection
    old = manifest_for(load_settings(), 384)
    new = manifest_for(load_settings(chunk_tokens=64, chunk_overlap=8), 8)
    new_name = generation_name(c, new)
    assert catalog.serving() == c and catalog.generations() == []
    assert catalog.read_manifest(c) is None  # a first start: no collection, no manifest

    first = open_gen(c)
    first.ensure_collection()
    first.upsert_chunks([point("a", 384)])
    assert catalog.exists(c) and catalog.read_manifest(c) is None
    catalog.write_manifest(c, old)
    assert catalog.read_manifest(c).fingerprint == old.fingerprint  # type: ignore[union-attr]

    second = open_gen(new_name, 8)  # another dimension: its own layout
    second.ensure_collection()
    second.upsert_chunks([point("b", 8)])
    catalog.write_manifest(new_name, new)
    assert catalog.generations() == sorted([c, new_name])
    assert catalog.serving() == c

    catalog.switch(new_name)
    assert catalog.serving() == new_name
    hits = second.query_dense([1.0] + [0.0] * 7, SearchFilter(tenant="t"), 5)
    assert [h.doc_id for h in hits] == ["b"]
    catalog.switch(c)  # roll back: the same switch
    assert catalog.serving() == c
    with pytest.raises(ValueError):
        catalog.switch(f"{c}-gmissing")
    with pytest.raises(ValueError):
        catalog.switch("someone-else")
    assert catalog.serving() == c
    assert first.count() == 1 and second.count() == 1
    first.close()
    second.close()


def test_edge_pointer_survives_a_torn_write(tmp_path: Path) -> None:
    """The pointer is replaced by rename: a leftover temp file never changes what serves."""
    catalog = EdgeCatalog(tmp_path, "kb")
    store = EdgeStore(tmp_path, "kb-gabc")
    store.ensure_collection()
    store.close()
    catalog.switch("kb-gabc")
    (tmp_path / ".kb.serving.999.tmp").write_text('{"generation": "kb-g')  # a killed writer
    assert catalog.serving() == "kb-gabc"
    (tmp_path / "kb.serving").write_text('{"generation": "../etc"}')
    with pytest.raises(ValueError):
        catalog.serving()


def test_server_alias_is_what_other_qdrant_clients_see(qdrant_server: tuple[str, str]) -> None:
    url, key = qdrant_server
    client = QdrantClient(url=url, api_key=key, check_compatibility=False)
    c = f"alias{uuid.uuid4().hex[:8]}"
    store = open_store(url, Path("."), f"{c}-g1", api_key=key)
    store.ensure_collection()
    store.upsert_chunks([point("x", 384)])
    try:
        catalog = ServerCatalog(client, c)
        catalog.switch(f"{c}-g1")
        assert client.count(f"{c}_serving").count == 1  # any client may read through the alias
    finally:
        client.delete_collection(f"{c}-g1")
        client.close()


def test_reembedding_payloads_reproduces_what_ingest_wrote(tmp_path: Path, embedder: Any) -> None:
    bm25 = Bm25Encoder()
    indexer = DocumentIndexer(embedder, bm25, ChunkingConfig(max_tokens=64, overlap=8))
    source = EdgeStore(tmp_path, "src")
    target = EdgeStore(tmp_path, "dst")
    long_title = "A very long title " * 30
    docs = [
        Upsert(
            tenant="t",
            doc_id=f"d{i}",
            version=3,
            title=title,
            text=text,
            updated_at=datetime(2025, 5, 1, tzinfo=UTC),
            origin=RecordOrigin("documents", 0, i, 0),
            acl=("user:ann",) if i == 1 else None,
        )
        for i, (title, text) in enumerate(
            [
                (
                    "Pumps",
                    "# Maintenance\n\nInspect the pumps.\n\n## Seals\n\nReplace seals. " * 20,
                ),
                (long_title, "Plain text without headings. " * 40),
                ("", "No title at all, one short line."),
            ]
        )
    ]
    try:
        apply_writes(source, indexer.process(docs).writes)
        copied = reembed_payloads(source, target, embedder, bm25, fingerprint="", batch=7)
        assert copied == source.count() == target.count() > 10
        src = {p["doc_id"] + str(p["chunk_index"]): p for p in source.scroll_payloads()}
        dst = {p["doc_id"] + str(p["chunk_index"]): p for p in target.scroll_payloads()}
        assert src == dst  # every payload field kept as it was (the same build: same hashes)
        assert {tuple(p["acl"]) for p in dst.values()} == {("*",), ("user:ann",)}
        other = EdgeStore(tmp_path, "other")
        reembed_payloads(source, other, embedder, bm25, fingerprint="another-build")
        moved = {p["doc_id"] + str(p["chunk_index"]): p for p in other.scroll_payloads()}
        other.close()
        for key, p in src.items():  # another build: only the chunk hash changes
            assert moved[key]["chunk_hash"] != p["chunk_hash"]
            assert {**moved[key], "chunk_hash": ""} == {**p, "chunk_hash": ""}
        flt = SearchFilter(tenant="t")
        for probe in ("replace the seals", "plain text", "no title"):
            vec = embedder.embed_query(probe)
            a = {h.point_id: round(h.score, 4) for h in source.query_dense(vec, flt, 100)}
            b = {h.point_id: round(h.score, 4) for h in target.query_dense(vec, flt, 100)}
            assert a == b, probe  # same vectors: the exact texts ingest embedded
            sparse = bm25.embed_query(probe)
            assert {
                h.point_id: round(h.score, 4) for h in source.query_sparse(sparse, flt, 100)
            } == {h.point_id: round(h.score, 4) for h in target.query_sparse(sparse, flt, 100)}
    finally:
        source.close()
        target.close()


def test_quality_gate_scores_both_settings_on_scratch_indexes(
    tmp_path: Path, embedder: Any
) -> None:
    from freshrag.reindex import quality_gate
    from tests.integration.test_eval import QUERIES, write_beir

    golden = write_beir(tmp_path / "golden", QUERIES)
    settings = load_settings(index_path=tmp_path / "index")
    old = manifest_for(settings, 384)
    new = manifest_for(load_settings(chunk_tokens=32, chunk_overlap=4), 384)
    scores = quality_gate(settings, golden, old, new, embedder)
    assert set(scores) == {"new_ndcg_at_10", "old_ndcg_at_10"}
    assert all(0.5 < v <= 1.0 for v in scores.values()), scores
    assert not (tmp_path / "index").exists()  # the serving index is never touched
