"""Property-based: the ACL filter inside the store query never leaks and never hides (issue 16).

Against real stores (Qdrant Edge, qdrant-client's local mode, the real Qdrant server): each
example rewrites random documents' ACLs (as ingest would: an upsert of the points), then runs
dense and sparse queries for a random caller (random principal set) with random metadata and
doc_id filters. The model says which documents the caller may read; every hit must be one of
them, and every readable matching document must be found (the limit covers every point).
"""

from __future__ import annotations

import random
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrag.core.principals import EVERYONE, NOBODY
from freshrag.retrieve.contract import DENSE_DIM, ChunkPoint, SearchFilter, SparseVector, Store
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.server_store import QdrantServerStore

pytestmark = [pytest.mark.integration]

USERS = [f"user:u{n}" for n in range(4)]
GROUPS = [f"group:g{n}" for n in range(3)]
PRINCIPALS = USERS + GROUPS
DOCS = [f"doc-{n:02d}" for n in range(24)]
TENANTS = ("acme", "globex")
COMMON = 1
LEGACY = "legacy"  # model value: a point written before ACLs (no `acl` field)
NOW = datetime(2026, 11, 29, tzinfo=UTC)


def vector(seed: str) -> list[float]:
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    v = rng.standard_normal(DENSE_DIM)
    return [float(x) for x in v / np.linalg.norm(v)]


class LegacyPoint(ChunkPoint):
    def payload(self) -> dict[str, Any]:
        out = super().payload()
        del out["acl"]
        return out


Acl = tuple[str, ...] | None | str  # principals, None (whole tenant), or LEGACY


def points(tenant: str, doc_id: str, acl: Acl) -> list[ChunkPoint]:
    n = int(doc_id[-2:])
    kind = LegacyPoint if acl == LEGACY else ChunkPoint
    return [
        kind(
            tenant=tenant,
            doc_id=doc_id,
            version=1,
            chunk_index=i,
            chunk_count=2,
            text=f"{doc_id} {i}",
            title=doc_id,
            url=None,
            source="prop",
            updated_at=NOW,
            indexed_at=NOW,
            metadata={"lang": ("en", "de", "fr")[n % 3], "team": ("a", "b")[n % 2]},
            dense=vector(f"{tenant}/{doc_id}/{i}"),
            sparse=SparseVector([COMMON, 100 + n], [0.5 + 0.01 * n + 0.001 * i, 1.0]),
            acl=None if acl == LEGACY or acl is None else tuple(acl),
        )
        for i in range(2)
    ]


def readable(acl: Acl, caller: set[str]) -> bool:
    if acl is None or acl == LEGACY:
        return True
    return bool((set(acl) - {NOBODY}) & (caller | {EVERYONE}))


acls = st.one_of(
    st.none(),
    st.just(LEGACY),
    st.just((NOBODY,)),
    st.lists(st.sampled_from(PRINCIPALS), min_size=1, max_size=4, unique=True).map(
        lambda ps: tuple(sorted(ps))
    ),
)


class Backend:
    def __init__(self, store: Store) -> None:
        self.store = store
        rng = random.Random(16)
        self.model: dict[tuple[str, str], Acl] = {}
        batch: list[ChunkPoint] = []
        for tenant in TENANTS:
            for doc_id in DOCS:
                acl: Acl = rng.choice(
                    [None, LEGACY, (NOBODY,), tuple(sorted(rng.sample(PRINCIPALS, 2)))]
                )
                self.model[(tenant, doc_id)] = acl
                batch += points(tenant, doc_id, acl)
        store.upsert_chunks(batch)


@pytest.fixture(scope="module", params=["edge", "memory", "qdrant_server"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    store: Store
    if request.param == "edge":
        store = EdgeStore(Path(tmp_path_factory.mktemp("acl-prop")) / "index", collection="p")
    elif request.param == "memory":
        from qdrant_client import QdrantClient

        store = QdrantServerStore(QdrantClient(":memory:"), collection="p")
    else:
        url, api_key = request.getfixturevalue("qdrant_server")
        name = f"acl_prop_{uuid.uuid4().hex[:10]}"
        store = QdrantServerStore.from_url(url, api_key=api_key, collection=name)
    store.ensure_collection()
    yield Backend(store)
    if isinstance(store, QdrantServerStore) and store.collection != "p":
        store.client.delete_collection(store.collection)
    store.close()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    changes=st.dictionaries(
        st.tuples(st.sampled_from(TENANTS), st.sampled_from(DOCS)), acls, max_size=6
    ),
    caller=st.sets(st.sampled_from([*PRINCIPALS, "user:g0", "group:u0", NOBODY]), max_size=4),
    tenant=st.sampled_from(TENANTS),
    lang=st.none() | st.sampled_from(["en", "de", "fr"]),
    teams=st.none() | st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2),
    doc_ids=st.none() | st.lists(st.sampled_from(DOCS), max_size=6),
    probe=st.sampled_from(DOCS),
)
def test_no_leak_and_nothing_missing(
    backend: Backend,
    changes: dict[tuple[str, str], Acl],
    caller: set[str],
    tenant: str,
    lang: str | None,
    teams: list[str] | None,
    doc_ids: list[str] | None,
    probe: str,
) -> None:
    store = backend.store
    batch: list[ChunkPoint] = []
    for (t, d), acl in changes.items():
        if acl == LEGACY and backend.model[(t, d)] != LEGACY:
            store.delete_document(t, d)  # a legacy point is written anew, not patched
        batch += points(t, d, acl)
        backend.model[(t, d)] = acl
    store.upsert_chunks(batch)

    principals = sorted({EVERYONE, *caller})
    flt = SearchFilter(
        tenant=tenant,
        metadata_equals={"lang": lang} if lang else {},
        metadata_any={"team": teams} if teams else {},
        doc_ids=doc_ids,
        principals=principals,
    )

    def matches(doc_id: str) -> bool:
        n = int(doc_id[-2:])
        return (
            (lang is None or ("en", "de", "fr")[n % 3] == lang)
            and (teams is None or ("a", "b")[n % 2] in teams)
            and (doc_ids is None or doc_id in doc_ids)
        )

    expected = {d for d in DOCS if matches(d) and readable(backend.model[(tenant, d)], set(caller))}
    limit = 2 * len(DOCS) * len(TENANTS)
    dense = store.query_dense(vector(f"{tenant}/{probe}/0"), flt, limit)
    sparse = store.query_sparse(SparseVector([COMMON], [1.0]), flt, limit)
    for hits in (dense, sparse):
        assert {h.payload["tenant"] for h in hits} <= {tenant}
        leaked = {h.doc_id for h in hits} - expected
        assert not leaked, f"leak: {leaked} for {principals}"
        assert {h.doc_id for h in hits} == expected, "a readable document is missing"
        assert len(hits) == 2 * len(expected)  # every chunk
        for h in hits:  # what a hit carries agrees with the model
            acl = h.payload.get("acl")
            assert acl is None or EVERYONE in acl or set(acl) & set(principals)
    status = store.document_status(tenant, probe, principals=principals)
    assert (status is not None) == readable(backend.model[(tenant, probe)], set(caller))
