"""Contract tests for every `Store` backend: Qdrant Edge (embedded) and Qdrant server (client).

Both backends run the same cases; `test_backends_agree` feeds identical inputs to both and
compares everything observable. Vectors are synthetic (seeded, deterministic) so no embedding
model is loaded here.
"""

from __future__ import annotations

import threading
import uuid
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

from freshrag.retrieve.contract import (
    DENSE_DIM,
    ChunkPoint,
    Hit,
    SchemaMismatchError,
    SearchFilter,
    SparseVector,
    Store,
    point_id,
)
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.server_store import QdrantServerStore
from freshrag.retrieve.stores import open_store

COLLECTION = "contract_test"
INDEXED_AT = datetime(2024, 7, 1, 12, 0, tzinfo=UTC)
PLUS_2H = timezone(timedelta(hours=2))  # 2024-03-01T01:00+02:00 is before d2's update

# Sparse vocabulary: every chunk has COMMON; each doc has its own term; each chunk index too.
COMMON = 1
DOC_TERM = {"d1": 101, "d2": 102, "d3": 103, "d4": 104}
CHUNK_TERM_BASE = 1000


def unit_vector(seed_text: str) -> list[float]:
    """Deterministic 384-d unit vector from a text seed (crc32, so stable across runs)."""
    rng = np.random.default_rng(zlib.crc32(seed_text.encode()))
    v = rng.standard_normal(DENSE_DIM)
    return [float(x) for x in v / np.linalg.norm(v)]


def sparse_for(doc_id: str, chunk_index: int) -> SparseVector:
    """Weights differ per (doc, chunk) so no two chunks of a tenant tie on any probe: a tie at
    the `limit` cut-off may legitimately keep different points in different backends."""
    doc_no = DOC_TERM[doc_id] - 100
    return SparseVector(
        indices=[COMMON, DOC_TERM[doc_id], CHUNK_TERM_BASE + chunk_index],
        values=[0.2 + 0.1 * doc_no + 0.02 * chunk_index, 1.0 + chunk_index * 0.25, 0.75],
    )


def chunk(
    tenant: str,
    doc_id: str,
    version: int,
    idx: int,
    count: int,
    *,
    updated_at: datetime,
    metadata: dict[str, Any],
    vector_seed: str | None = None,
) -> ChunkPoint:
    """One synthetic chunk; `vector_seed` lets two tenants share identical vectors."""
    seed = vector_seed or f"{tenant}/{doc_id}/{version}/{idx}"
    return ChunkPoint(
        tenant=tenant,
        doc_id=doc_id,
        version=version,
        chunk_index=idx,
        chunk_count=count,
        text=f"{doc_id} v{version} chunk {idx}",
        title=f"Title {doc_id}",
        url=f"https://example.test/{doc_id}",
        source="test",
        updated_at=updated_at,
        indexed_at=INDEXED_AT,
        metadata=metadata,
        dense=unit_vector(seed),
        sparse=sparse_for(doc_id, idx),
    )


def doc(
    tenant: str,
    doc_id: str,
    version: int,
    count: int,
    updated_at: datetime,
    metadata: dict[str, Any],
    *,
    shared_vectors: bool = False,
) -> list[ChunkPoint]:
    return [
        chunk(
            tenant,
            doc_id,
            version,
            i,
            count,
            updated_at=updated_at,
            metadata=metadata,
            # acme/d1 and globex/d1 get identical vectors: a leaky tenant filter would show.
            vector_seed=f"shared/{doc_id}/{version}/{i}" if shared_vectors else None,
        )
        for i in range(count)
    ]


D1_META = {"lang": "en", "team": "core", "year": 2024}
D2_META = {"lang": "de", "team": "ml", "year": 2023}
D3_META = {"lang": "en", "team": "ml", "year": 2023}
D1_UPDATED = datetime(2024, 1, 10, tzinfo=UTC)
D2_UPDATED = datetime(2024, 3, 1, tzinfo=UTC)
D3_UPDATED = datetime(2024, 6, 1, tzinfo=UTC)


def corpus() -> list[ChunkPoint]:
    """acme: d1 (3 chunks, v1), d2 (2, v1), d3 (1, v2); globex: d1 (3, v1, same vectors)."""
    return [
        *doc("acme", "d1", 1, 3, D1_UPDATED, D1_META, shared_vectors=True),
        *doc("acme", "d2", 1, 2, D2_UPDATED, D2_META),
        *doc("acme", "d3", 2, 1, D3_UPDATED, D3_META),
        *doc("globex", "d1", 1, 3, D1_UPDATED, D1_META, shared_vectors=True),
    ]


def make_edge(tmp_path: Path) -> EdgeStore:
    return EdgeStore(tmp_path / "index", collection=COLLECTION)


def make_server() -> QdrantServerStore:
    """qdrant-client's local mode: the third contract backend (not a stand-in for the server)."""
    return QdrantServerStore(QdrantClient(":memory:"), collection=COLLECTION)


def make_real_server(request: pytest.FixtureRequest) -> QdrantServerStore:
    """A fresh collection on the real Qdrant server of the session (never skipped)."""
    url, api_key = request.getfixturevalue("qdrant_server")
    name = f"{COLLECTION}_{uuid.uuid4().hex[:10]}"
    return QdrantServerStore.from_url(url, api_key=api_key, collection=name)


def make_backend(kind: str, request: pytest.FixtureRequest, path: Path) -> Store:
    if kind == "edge":
        return make_edge(path)
    if kind == "memory":
        return make_server()
    return make_real_server(request)


def drop(store: Store) -> None:
    """Close a store; a real server's test collection (uuid-suffixed) is deleted first."""
    if isinstance(store, QdrantServerStore) and store.collection != COLLECTION:
        store.client.delete_collection(store.collection)
    store.close()


BACKENDS = ["edge", "memory", "qdrant_server"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store per test (for tests that write)."""
    s = make_backend(request.param, request, tmp_path)
    s.ensure_collection()
    yield s
    drop(s)


@pytest.fixture
def loaded(store: Store) -> Store:
    store.upsert_chunks(corpus())
    return store


@pytest.fixture(scope="module", params=BACKENDS)
def readonly(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """One loaded store per backend shared by read-only tests (creating Edge shards costs ~1 s)."""
    s = make_backend(request.param, request, tmp_path_factory.mktemp("readonly"))
    s.ensure_collection()
    s.upsert_chunks(corpus())
    yield s
    drop(s)


def doc_ids(hits: Sequence[Hit]) -> set[str]:
    return {h.doc_id for h in hits}


def ids(hits: Sequence[Hit]) -> list[str]:
    return [h.point_id for h in hits]


# -- lifecycle ------------------------------------------------------------------------------


def test_stores_satisfy_protocol(store: Store) -> None:
    assert isinstance(store, Store)


def test_ensure_collection_is_idempotent(store: Store) -> None:
    store.ensure_collection()
    assert store.count() == 0
    store.upsert_chunks(corpus())
    store.ensure_collection()
    assert store.count() == 9


# -- writes and status ------------------------------------------------------------------------


def test_upsert_then_count_and_status(readonly: Store) -> None:
    assert readonly.count() == 9
    assert readonly.count("acme") == 6
    assert readonly.count("globex") == 3
    assert readonly.count("nobody") == 0

    status = readonly.document_status("acme", "d1")
    assert status is not None
    assert (status.tenant, status.doc_id, status.version, status.chunk_count) == (
        "acme",
        "d1",
        1,
        3,
    )
    assert status.indexed_at == INDEXED_AT.isoformat()
    assert status.updated_at == D1_UPDATED.isoformat()
    d3 = readonly.document_status("acme", "d3")
    assert d3 is not None and (d3.version, d3.chunk_count) == (2, 1)
    assert readonly.document_status("acme", "missing") is None
    assert readonly.document_status("globex", "d2") is None  # d2 exists only for acme


def test_upsert_is_idempotent_and_empty_is_noop(loaded: Store) -> None:
    loaded.upsert_chunks(corpus())
    loaded.upsert_chunks([])
    assert loaded.count() == 9
    ids_seen = {
        point_id(p["tenant"], p["doc_id"], p["chunk_index"]) for p in loaded.scroll_payloads()
    }
    assert ids_seen == {c.id for c in corpus()}


def test_payload_round_trips(readonly: Store) -> None:
    by_key = {(p["tenant"], p["doc_id"], p["chunk_index"]): p for p in readonly.scroll_payloads()}
    for c in corpus():
        assert by_key[(c.tenant, c.doc_id, c.chunk_index)] == c.payload()


def test_delete_versions_below_removes_only_older_versions(loaded: Store) -> None:
    # v2 of acme/d1 has 2 chunks: they overwrite chunk points 0 and 1; chunk 2 stays at v1.
    loaded.upsert_chunks(doc("acme", "d1", 2, 2, D1_UPDATED, D1_META))
    assert loaded.count("acme") == 6
    status = loaded.document_status("acme", "d1")
    assert status is not None and (status.version, status.chunk_count) == (2, 2)

    loaded.delete_versions_below("acme", "d1", 2)

    acme_d1 = [p for p in loaded.scroll_payloads("acme") if p["doc_id"] == "d1"]
    assert sorted((p["chunk_index"], p["version"]) for p in acme_d1) == [(0, 2), (1, 2)]
    assert loaded.count("acme") == 5
    assert loaded.count("globex") == 3  # same doc_id in another tenant is untouched
    assert loaded.document_versions("acme", ["d2", "d3"]) == {"d2": 1, "d3": 2}

    loaded.delete_versions_below("acme", "d1", 2)  # nothing older left: no-op
    assert loaded.count("acme") == 5


def test_delete_document_with_and_without_version(loaded: Store) -> None:
    loaded.delete_document("acme", "d3", up_to_version=1)  # d3 is at v2: kept
    assert loaded.document_versions("acme", ["d3"]) == {"d3": 2}
    loaded.delete_document("acme", "d3", up_to_version=2)
    assert loaded.document_status("acme", "d3") is None

    loaded.delete_document("acme", "d1")
    assert loaded.document_status("acme", "d1") is None
    assert loaded.count("acme") == 2  # only d2 left
    assert loaded.document_status("globex", "d1") is not None
    assert loaded.count("globex") == 3


def test_document_versions(loaded: Store) -> None:
    assert loaded.document_versions("acme", ["d1", "d2", "d3", "missing"]) == {
        "d1": 1,
        "d2": 1,
        "d3": 2,
    }
    assert loaded.document_versions("globex", ["d1", "d2"]) == {"d1": 1}
    assert loaded.document_versions("acme", []) == {}
    loaded.upsert_chunks(doc("acme", "d2", 5, 1, D2_UPDATED, D2_META))  # half-applied upsert
    assert loaded.document_versions("acme", ["d2"]) == {"d2": 5}


# -- search ---------------------------------------------------------------------------------


def test_tenant_isolation_dense_and_sparse(readonly: Store) -> None:
    query = unit_vector("shared/d1/1/0")  # exactly acme/d1#0 and globex/d1#0
    for tenant in ("acme", "globex"):
        hits = readonly.query_dense(query, SearchFilter(tenant=tenant), limit=20)
        assert hits and {h.payload["tenant"] for h in hits} == {tenant}
        assert hits[0].point_id == point_id(tenant, "d1", 0)
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert len(hits) == (6 if tenant == "acme" else 3)

        sparse = SparseVector([DOC_TERM["d1"], COMMON], [1.0, 1.0])
        s_hits = readonly.query_sparse(sparse, SearchFilter(tenant=tenant), limit=20)
        assert s_hits and {h.payload["tenant"] for h in s_hits} == {tenant}
        assert doc_ids(s_hits[:3]) == {"d1"}

    assert readonly.query_dense(query, SearchFilter(tenant="nobody"), limit=5) == []
    assert {p["tenant"] for p in readonly.scroll_payloads("globex")} == {"globex"}
    assert len(readonly.scroll_payloads("acme")) == 6


def test_hits_are_score_ordered_with_payload(readonly: Store) -> None:
    hits = readonly.query_dense(unit_vector("acme/d2/1/1"), SearchFilter(tenant="acme"), limit=4)
    assert len(hits) == 4
    assert hits[0].point_id == point_id("acme", "d2", 1)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].payload["text"] == "d2 v1 chunk 1"
    assert hits[0].payload["metadata"] == D2_META


def test_empty_sparse_query_returns_nothing(readonly: Store) -> None:
    assert readonly.query_sparse(SparseVector([], []), SearchFilter(tenant="acme"), 10) == []


FILTER_CASES: list[tuple[str, dict[str, Any], set[str]]] = [
    ("eq_lang", {"metadata_equals": {"lang": "en"}}, {"d1", "d3"}),
    ("eq_two_keys", {"metadata_equals": {"lang": "en", "team": "ml"}}, {"d3"}),
    ("eq_int", {"metadata_equals": {"year": 2024}}, {"d1"}),
    ("eq_nomatch", {"metadata_equals": {"lang": "fr"}}, set()),
    ("any_team", {"metadata_any": {"team": ["ml"]}}, {"d2", "d3"}),
    ("any_lang", {"metadata_any": {"lang": ["de", "fr"]}}, {"d2"}),
    ("any_int", {"metadata_any": {"year": [2023]}}, {"d2", "d3"}),
    ("after", {"updated_after": datetime(2024, 2, 1, tzinfo=UTC)}, {"d2", "d3"}),
    # Bounds are inclusive: d2 was updated exactly at 2024-03-01.
    ("before_inclusive", {"updated_before": D2_UPDATED}, {"d1", "d2"}),
    ("after_inclusive", {"updated_after": D2_UPDATED}, {"d2", "d3"}),
    ("after_naive_is_utc", {"updated_after": datetime(2024, 3, 1)}, {"d2", "d3"}),
    ("before_other_tz", {"updated_before": datetime(2024, 3, 1, 1, tzinfo=PLUS_2H)}, {"d1"}),
    (
        "between",
        {"updated_after": datetime(2024, 2, 1, tzinfo=UTC), "updated_before": D2_UPDATED},
        {"d2"},
    ),
    ("doc_ids", {"doc_ids": ["d1", "d3"]}, {"d1", "d3"}),
    ("doc_ids_missing", {"doc_ids": ["zzz"]}, set()),
    ("doc_ids_empty_matches_nothing", {"doc_ids": []}, set()),
    (
        "combined",
        {
            "metadata_any": {"team": ["ml", "core"]},
            "doc_ids": ["d1", "d2"],
            "updated_after": D2_UPDATED,
        },
        {"d2"},
    ),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES]
)
def test_filters(readonly: Store, name: str, kwargs: dict[str, Any], expected: set[str]) -> None:
    flt = SearchFilter(tenant="acme", **kwargs)
    dense_hits = readonly.query_dense(unit_vector("probe"), flt, limit=50)
    assert doc_ids(dense_hits) == expected, name
    assert {h.payload["tenant"] for h in dense_hits} <= {"acme"}
    sparse_hits = readonly.query_sparse(SparseVector([COMMON], [1.0]), flt, limit=50)
    assert doc_ids(sparse_hits) == expected, name
    # every chunk of the matching docs is found (COMMON is in all of them)
    assert len(sparse_hits) == sum(
        1 for c in corpus() if c.tenant == "acme" and c.doc_id in expected
    )


# -- both backends agree --------------------------------------------------------------------

PARITY_QUERIES: list[SearchFilter] = [
    SearchFilter(tenant="acme"),
    SearchFilter(tenant="globex"),
    SearchFilter(tenant="acme", metadata_equals={"lang": "en"}),
    SearchFilter(tenant="acme", metadata_any={"team": ["ml", "core"]}),
    SearchFilter(tenant="acme", updated_after=datetime(2024, 2, 1, tzinfo=UTC)),
    SearchFilter(tenant="acme", updated_before=D2_UPDATED, doc_ids=["d2", "d3", "d4"]),
]


def snapshot(s: Store) -> dict[str, Any]:
    """Everything observable through the contract, in a backend-neutral shape."""
    out: dict[str, Any] = {
        "count": s.count(),
        "count_acme": s.count("acme"),
        "count_globex": s.count("globex"),
        "versions_acme": s.document_versions("acme", ["d1", "d2", "d3", "d4"]),
        "versions_globex": s.document_versions("globex", ["d1", "d2", "d3", "d4"]),
        "status": [s.document_status(t, d) for t in ("acme", "globex") for d in ("d1", "d2", "d3")],
        "payloads": sorted(
            s.scroll_payloads(), key=lambda p: (p["tenant"], p["doc_id"], p["chunk_index"])
        ),
    }
    probes = [unit_vector("probe-a"), unit_vector("shared/d1/1/1"), unit_vector("acme/d2/1/0")]
    sparse_probes = [
        SparseVector([COMMON], [1.0]),
        SparseVector([DOC_TERM["d2"], CHUNK_TERM_BASE + 1], [1.0, 0.5]),
        SparseVector([DOC_TERM["d1"], DOC_TERM["d3"], COMMON], [0.3, 1.0, 0.2]),
    ]
    for qi, flt in enumerate(PARITY_QUERIES):
        for pi, vec in enumerate(probes):
            out[f"dense/{qi}/{pi}"] = s.query_dense(vec, flt, limit=4)
        for pi, sp in enumerate(sparse_probes):
            out[f"sparse/{qi}/{pi}"] = s.query_sparse(sp, flt, limit=4)
    return out


def assert_same(
    edge: dict[str, Any], server: dict[str, Any], step: str, *, sparse_scores: bool = True
) -> None:
    """Same ids in the same order everywhere (ties are broken by point id in both stores) and
    scores equal up to float32 rounding, except sparse scores when `sparse_scores` is False."""
    assert edge.keys() == server.keys()
    for key, e_val in edge.items():
        s_val = server[key]
        if key.startswith(("dense/", "sparse/")):
            assert ids(e_val) == ids(s_val), f"{step}: {key}"
            assert [h.payload for h in e_val] == [h.payload for h in s_val], f"{step}: {key}"
            if key.startswith("dense/") or sparse_scores:
                assert [h.score for h in e_val] == pytest.approx(
                    [h.score for h in s_val], abs=1e-4
                ), f"{step}: {key}"
        else:
            assert e_val == s_val, f"{step}: {key}"


@pytest.mark.parametrize("other", ["memory", "qdrant_server"])
def test_backends_agree(tmp_path: Path, request: pytest.FixtureRequest, other: str) -> None:
    """Identical inputs to both backends give identical observable results.

    Known difference (documented, not a bug in our code): with the IDF modifier, the Qdrant
    engine (Edge, and the server alike) keeps a deleted point in its sparse IDF statistics
    until the segment is rebuilt (on reload or optimization; qdrant/qdrant#6739), while
    qdrant-client's local mode, our stand-in for the server here, updates them on delete
    (qdrant-client#1427). So after a delete, sparse *scores* drift by the IDF ratio while ids
    and order still agree on this corpus; reopening the Edge shard makes the scores agree again.
    """
    edge, server = make_edge(tmp_path), make_backend(other, request, tmp_path)
    # the real server's engine, like Edge's, keeps deleted points in its IDF statistics
    same_idf = other == "qdrant_server"
    steps: list[tuple[str, bool, Any]] = [  # (name, deletes?, action)
        ("load corpus", False, lambda s: s.upsert_chunks(corpus())),
        (
            "upsert acme/d1 v2",
            False,
            lambda s: s.upsert_chunks(doc("acme", "d1", 2, 2, D1_UPDATED, D1_META)),
        ),
        ("gc acme/d1 < v2", True, lambda s: s.delete_versions_below("acme", "d1", 2)),
        (
            "add acme/d4",
            False,
            lambda s: s.upsert_chunks(doc("acme", "d4", 1, 4, D3_UPDATED, D1_META)),
        ),
        ("delete acme/d3 <= v2", True, lambda s: s.delete_document("acme", "d3", 2)),
        ("delete globex/d1", True, lambda s: s.delete_document("globex", "d1")),
    ]
    deleted = False
    try:
        for s in (edge, server):
            s.ensure_collection()
        assert_same(snapshot(edge), snapshot(server), "empty")
        for step, deletes, apply in steps:
            apply(edge)
            apply(server)
            deleted = deleted or deletes
            e_snap = snapshot(edge)
            assert_same(e_snap, snapshot(server), step, sparse_scores=same_idf or not deleted)
        # Sanity: the final state is the one we meant to reach (guards against both being empty).
        assert e_snap["count"] == 2 + 2 + 4
        assert e_snap["versions_acme"] == {"d1": 2, "d2": 1, "d4": 1}

        if not same_idf:
            edge.close()
            edge = make_edge(tmp_path)  # reload rebuilds Edge's IDF statistics from live points
            assert_same(snapshot(edge), snapshot(server), "edge reopened", sparse_scores=True)
    finally:
        edge.close()
        drop(server)


# -- schema mismatch ------------------------------------------------------------------------


def test_edge_schema_mismatch(tmp_path: Path) -> None:
    shard_dir = tmp_path / "index" / COLLECTION
    raw = qe.EdgeShard.create(
        str(shard_dir),
        qe.EdgeConfig(
            vectors={"dense": qe.EdgeVectorParams(size=128, distance=qe.Distance.Cosine)},
            sparse_vectors={"bm25": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        ),
    )
    raw.flush()
    raw.close()
    with pytest.raises(SchemaMismatchError, match="dense size 128, expected 384"):
        make_edge(tmp_path).ensure_collection()
    # Nothing was rewritten: the old layout still loads as it was.
    again = qe.EdgeShard.load(str(shard_dir))
    assert again.count(qe.CountRequest(exact=True)) == 0
    again.close()
    with pytest.raises(SchemaMismatchError, match="dense size 128"):
        make_edge(tmp_path).ensure_collection()


def test_edge_schema_mismatch_missing_sparse(tmp_path: Path) -> None:
    raw = qe.EdgeShard.create(
        str(tmp_path / "index" / COLLECTION),
        qe.EdgeConfig(
            vectors={"dense": qe.EdgeVectorParams(size=384, distance=qe.Distance.Cosine)}
        ),
    )
    raw.close()
    with pytest.raises(SchemaMismatchError, match="no sparse vector 'bm25'"):
        make_edge(tmp_path).ensure_collection()


def test_edge_payload_index_mismatch_writes_nothing(tmp_path: Path) -> None:
    shard_dir = tmp_path / "index" / COLLECTION
    raw = qe.EdgeShard.create(
        str(shard_dir),
        qe.EdgeConfig(
            vectors={"dense": qe.EdgeVectorParams(size=384, distance=qe.Distance.Cosine)},
            sparse_vectors={"bm25": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        ),
    )
    raw.update(qe.UpdateOperation.create_field_index("version", qe.PayloadSchemaType.Keyword))
    raw.close()
    with pytest.raises(SchemaMismatchError, match="'version'"):
        make_edge(tmp_path).ensure_collection()
    again = qe.EdgeShard.load(str(shard_dir))
    assert set(again.info().payload_schema) == {"version"}  # no other index was created
    again.close()


def test_server_schema_mismatch() -> None:
    client = QdrantClient(":memory:")
    client.create_collection(
        COLLECTION,
        vectors_config={"dense": models.VectorParams(size=128, distance=models.Distance.COSINE)},
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    with pytest.raises(SchemaMismatchError, match="dense size 128, expected 384"):
        QdrantServerStore(client, COLLECTION).ensure_collection()

    client.create_collection(
        "no_idf",
        vectors_config={"dense": models.VectorParams(size=384, distance=models.Distance.COSINE)},
        sparse_vectors_config={"bm25": models.SparseVectorParams()},
    )
    with pytest.raises(SchemaMismatchError, match="expected idf"):
        QdrantServerStore(client, "no_idf").ensure_collection()


# -- Edge specifics -------------------------------------------------------------------------


def test_edge_close_and_reopen_keeps_points(tmp_path: Path) -> None:
    first = make_edge(tmp_path)
    first.ensure_collection()
    first.upsert_chunks(corpus())
    first.delete_document("acme", "d3")
    before_hits = first.query_dense(unit_vector("acme/d2/1/0"), SearchFilter(tenant="acme"), 5)
    first.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.count()

    second = make_edge(tmp_path)
    second.ensure_collection()
    try:
        assert second.count() == 8
        assert second.document_versions("acme", ["d1", "d2", "d3"]) == {"d1": 1, "d2": 1}
        after_hits = second.query_dense(unit_vector("acme/d2/1/0"), SearchFilter(tenant="acme"), 5)
        assert ids(after_hits) == ids(before_hits)
        assert after_hits[0].point_id == point_id("acme", "d2", 0)
    finally:
        second.close()


def test_edge_reads_while_another_thread_writes(tmp_path: Path) -> None:
    store = make_edge(tmp_path)
    store.ensure_collection()
    store.upsert_chunks(corpus())
    errors: list[BaseException] = []
    done = threading.Event()
    probe = unit_vector("probe")

    def writer() -> None:
        try:
            for version in range(1, 41):
                store.upsert_chunks(doc("w", "d1", version, 3, D1_UPDATED, D1_META))
                store.delete_versions_below("w", "d1", version)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                hits = store.query_dense(probe, SearchFilter(tenant="acme"), limit=3)
                assert len(hits) == 3 and {h.payload["tenant"] for h in hits} == {"acme"}
                assert store.count("acme") == 6
                store.document_status("w", "d1")
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=writer),
        *(threading.Thread(target=reader) for _ in range(2)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert not errors, errors
        status = store.document_status("w", "d1")
        assert status is not None and (status.version, status.chunk_count) == (40, 3)
        assert store.count("w") == 3
    finally:
        store.close()


def test_open_store_picks_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    edge = open_store(None, tmp_path / "idx", "c1")
    assert isinstance(edge, EdgeStore)
    assert edge.shard_dir == tmp_path / "idx" / "c1"

    # No server here: capture how the client would be built instead of connecting.
    seen: dict[str, Any] = {}

    def fake_client(**kwargs: Any) -> QdrantClient:
        seen.update(kwargs)
        return QdrantClient(":memory:")

    monkeypatch.setattr("freshrag.retrieve.server_store.QdrantClient", fake_client)
    server = open_store("http://qdrant.test:6333", tmp_path / "unused", "c2", api_key="k")
    assert isinstance(server, QdrantServerStore)
    assert seen == {"url": "http://qdrant.test:6333", "api_key": "k", "check_compatibility": False}
    assert server.collection == "c2"
    server.ensure_collection()
    assert server.count() == 0
    server.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_watermarks_round_trip_on_every_backend(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:

    store: Any = make_backend(backend, request, tmp_path / "wm")
    store.ensure_collection()
    assert store.load_watermarks("documents") == {}
    store.save_watermarks("documents", {"0": 12, "1": 7})
    store.save_watermarks("other", {"0": 1})
    store.save_watermarks("documents", {"0": 15, "1": 7})
    assert store.load_watermarks("documents") == {"0": 15, "1": 7}
    assert store.load_watermarks("other") == {"0": 1}
    # a cluster: each process publishes only the partitions it owns, and never erases others'
    store.save_watermarks("documents", {"2": 3})
    store.save_watermarks("documents", {"1": 9})
    store.save_watermarks("documents", {})
    assert store.load_watermarks("documents") == {"0": 15, "1": 9, "2": 3}
    assert store.count() == 0  # watermarks never show up as chunks
    if backend == "qdrant_server":
        store.client.delete_collection(f"{store.collection}_watermarks")
    drop(store)


# -- document ACLs (issue 16) ------------------------------------------------------------------

ACL_DOCS: dict[str, tuple[str, ...] | None] = {
    "pub": None,  # stored as ["*"]: the whole tenant
    "eng": ("group:eng",),
    "alice": ("user:alice",),
    "both": ("group:eng", "user:bob"),
    "closed": (),  # an acl naming no one: stored as ["nobody"], never as [] (is_empty)
}
ACL_TERM = {"pub": 201, "eng": 202, "alice": 203, "both": 204, "closed": 205, "legacy": 206}


class LegacyPoint(ChunkPoint):
    """A point written before ACLs existed: its payload has no `acl` field."""

    def payload(self) -> dict[str, Any]:
        out = super().payload()
        del out["acl"]
        return out


def acl_point(
    tenant: str, doc_id: str, acl: tuple[str, ...] | None, *, legacy: bool = False
) -> ChunkPoint:
    kind = LegacyPoint if legacy else ChunkPoint
    return kind(
        tenant=tenant,
        doc_id=doc_id,
        version=1,
        chunk_index=0,
        chunk_count=1,
        text=f"{doc_id} text",
        title=doc_id,
        url=None,
        source="test",
        updated_at=D1_UPDATED,
        indexed_at=INDEXED_AT,
        metadata={"lang": "en" if doc_id in ("pub", "eng", "legacy") else "de"},
        dense=unit_vector(f"acl/{doc_id}"),
        sparse=SparseVector([COMMON, ACL_TERM[doc_id]], [1.0, 0.5]),
        acl=acl,
    )


def acl_corpus() -> list[ChunkPoint]:
    points = [acl_point("acme", d, acl) for d, acl in ACL_DOCS.items()]
    points.append(acl_point("acme", "legacy", None, legacy=True))
    # globex's eng document: a principal never reaches across tenants
    points.append(acl_point("globex", "eng", ("group:eng",)))
    return points


@pytest.fixture(scope="module", params=BACKENDS)
def acl_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    s = make_backend(request.param, request, tmp_path_factory.mktemp("acl"))
    s.ensure_collection()
    s.upsert_chunks(acl_corpus())
    yield s
    drop(s)


TENANT_WIDE = {"pub", "legacy"}
ACL_CASES: list[tuple[str, dict[str, Any], set[str]]] = [
    ("unrestricted", {"principals": None}, {*ACL_DOCS, "legacy"}),
    ("no_principals_is_everyone", {"principals": []}, TENANT_WIDE),
    ("everyone", {"principals": ["*"]}, TENANT_WIDE),
    ("group", {"principals": ["*", "group:eng"]}, TENANT_WIDE | {"eng", "both"}),
    ("user", {"principals": ["*", "user:alice"]}, TENANT_WIDE | {"alice"}),
    ("user_in_list", {"principals": ["user:bob"]}, TENANT_WIDE | {"both"}),
    ("case_sensitive", {"principals": ["group:ENG", "User:alice"]}, TENANT_WIDE),
    ("kind_matters", {"principals": ["user:eng", "group:alice"]}, TENANT_WIDE),
    ("nobody_is_no_callers", {"principals": ["nobody", "*"]}, TENANT_WIDE),
    (
        "many",
        {"principals": ["user:alice", "user:bob", "group:eng", "group:x"]},
        TENANT_WIDE | {"eng", "alice", "both"},
    ),
    (
        "with_metadata",
        {"principals": ["group:eng", "user:alice"], "metadata_equals": {"lang": "de"}},
        {"alice", "both"},
    ),
    (
        "with_doc_ids",
        {"principals": ["user:alice"], "doc_ids": ["eng", "alice", "legacy", "closed"]},
        {"alice", "legacy"},
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "expected"), ACL_CASES, ids=[c[0] for c in ACL_CASES])
def test_acl_filter_dense_and_sparse(
    acl_store: Store, name: str, kwargs: dict[str, Any], expected: set[str]
) -> None:
    flt = SearchFilter(tenant="acme", **kwargs)
    dense_hits = acl_store.query_dense(unit_vector("probe"), flt, limit=50)
    assert doc_ids(dense_hits) == expected, name
    sparse_hits = acl_store.query_sparse(SparseVector([COMMON], [1.0]), flt, limit=50)
    assert doc_ids(sparse_hits) == expected, name
    assert {h.payload["tenant"] for h in dense_hits + sparse_hits} <= {"acme"}
    # the exact vector of a forbidden document still does not find it
    for doc_id in {*ACL_DOCS, "legacy"} - expected:
        probe = acl_store.query_dense(unit_vector(f"acl/{doc_id}"), flt, limit=1)
        assert doc_id not in doc_ids(probe)
        term = SparseVector([ACL_TERM[doc_id]], [1.0])
        assert acl_store.query_sparse(term, flt, limit=5) == []


def test_acl_payload_and_legacy_points(acl_store: Store) -> None:
    stored = {p["doc_id"]: p.get("acl") for p in acl_store.scroll_payloads("acme")}
    assert stored == {
        "pub": ["*"],
        "eng": ["group:eng"],
        "alice": ["user:alice"],
        "both": ["group:eng", "user:bob"],
        "closed": ["nobody"],
        "legacy": None,  # no field at all: readable by the whole tenant (IsEmpty)
    }
    globex = acl_store.query_dense(
        unit_vector("acl/eng"), SearchFilter("globex", principals=["group:eng"]), limit=5
    )
    assert [h.payload["tenant"] for h in globex] == ["globex"]


def test_document_status_honours_principals(acl_store: Store) -> None:
    def status(doc_id: str, principals: list[str] | None) -> bool:
        return acl_store.document_status("acme", doc_id, principals=principals) is not None

    assert status("eng", None) and status("eng", ["group:eng"])
    assert not status("eng", ["*"]) and not status("eng", ["user:alice"])
    assert status("legacy", []) and status("pub", ["*"])
    assert not status("closed", ["*", "group:eng", "user:alice", "user:bob"])
    assert not status("eng", ["nobody"])
    assert acl_store.document_status("globex", "alice", principals=["user:alice"]) is None


def test_revoking_a_principal_hides_the_document_at_once(store: Store) -> None:
    store.upsert_chunks([acl_point("acme", "both", ("group:eng", "user:bob"))])
    bob = SearchFilter("acme", principals=["*", "user:bob"])
    assert doc_ids(store.query_dense(unit_vector("acl/both"), bob, limit=5)) == {"both"}
    store.upsert_chunks([acl_point("acme", "both", ("group:eng",))])  # bob removed
    assert store.query_dense(unit_vector("acl/both"), bob, limit=5) == []
    assert store.query_sparse(SparseVector([ACL_TERM["both"]], [1.0]), bob, limit=5) == []
    assert store.document_status("acme", "both", principals=bob.principals) is None
    eng = SearchFilter("acme", principals=["group:eng"])
    assert doc_ids(store.query_dense(unit_vector("acl/both"), eng, limit=5)) == {"both"}
