"""`Store` on a Qdrant server (or `QdrantClient(":memory:")` in tests) via qdrant-client.

Every write uses `wait=True`, so a write is visible to searches when the call returns; ingest
relies on that to delete stale versions right after upserting the new one.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from freshrag.retrieve.contract import (
    DEFAULT_COLLECTION,
    DENSE_DIM,
    DENSE_VECTOR,
    EVERYONE,
    NOBODY,
    PAYLOAD_INDEXES,
    SPARSE_VECTOR,
    ChunkLayout,
    ChunkPoint,
    DocumentStatus,
    Hit,
    SchemaMismatchError,
    SearchFilter,
    SparseVector,
    StoredVectors,
)
from freshrag.retrieve.payloads import (
    LAYOUT_FIELDS,
    as_aware,
    hit_order,
    layouts_from_payloads,
    status_from_payloads,
    versions_from_payloads,
)

UPSERT_BATCH = 256
SCROLL_PAGE = 512

# Local mode (":memory:" / path) keeps no payload indexes and warns about it; that is expected.
_LOCAL_INDEX_WARNING = "Payload indexes have no effect in the local Qdrant"


def _index_schema(kind: str) -> models.PayloadSchemaType | models.KeywordIndexParams:
    """Server payload index schema for a PAYLOAD_INDEXES kind."""
    if kind == "keyword_tenant":
        return models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
    return {
        "keyword": models.PayloadSchemaType.KEYWORD,
        "datetime": models.PayloadSchemaType.DATETIME,
        "integer": models.PayloadSchemaType.INTEGER,
    }[kind]


def _index_data_type(kind: str) -> models.PayloadSchemaType:
    """The data type an existing index of `kind` must report."""
    if kind == "keyword_tenant":
        return models.PayloadSchemaType.KEYWORD
    return models.PayloadSchemaType(kind)


def _transient(exc: BaseException) -> bool:
    """A server error or no answer: worth retrying while a deployment starts."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is not None and exc.status_code >= 500
    return isinstance(exc, ResponseHandlingException | ConnectionError | TimeoutError)


def _match(key: str, value: str | int | bool) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _match_any(key: str, values: Sequence[Any]) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchAny(any=list(values)))


def _tenant_filter(tenant: str | None) -> models.Filter | None:
    return models.Filter(must=[_match("tenant", tenant)]) if tenant is not None else None


def _doc_filter(tenant: str, doc_id: str, *extra: models.Condition) -> models.Filter:
    return models.Filter(must=[_match("tenant", tenant), _match("doc_id", doc_id), *extra])


def build_filter(flt: SearchFilter) -> models.Filter:
    """SearchFilter -> server Filter; the tenant condition is always present."""
    must: list[models.Condition] = [_match("tenant", flt.tenant)]
    for key, value in flt.metadata_equals.items():
        must.append(_match(f"metadata.{key}", value))
    for key, values in flt.metadata_any.items():
        must.append(_match_any(f"metadata.{key}", values))
    if flt.updated_after is not None or flt.updated_before is not None:
        must.append(
            models.FieldCondition(
                key="updated_at",
                range=models.DatetimeRange(
                    gte=as_aware(flt.updated_after) if flt.updated_after else None,
                    lte=as_aware(flt.updated_before) if flt.updated_before else None,
                ),
            )
        )
    if flt.doc_ids is not None:
        must.append(_match_any("doc_id", flt.doc_ids))
    if flt.principals is not None:
        must.append(acl_condition(flt.principals))
    return models.Filter(must=must)


def acl_condition(principals: Sequence[str]) -> models.Filter:
    """Readable by one of `principals` (EVERYONE implied; NOBODY is no caller's), or no `acl`
    (a point written before ACLs)."""
    readable = sorted({EVERYONE, *principals} - {NOBODY})
    return models.Filter(
        should=[
            _match_any("acl", readable),
            models.IsEmptyCondition(is_empty=models.PayloadField(key="acl")),
        ]
    )


@dataclass(frozen=True)
class ClusterLayout:
    """How a new collection is spread over a Qdrant cluster (None: chosen from the peers)."""

    shards: int | None = None
    replication_factor: int | None = None
    write_consistency: int = 1

    def is_default(self) -> bool:
        return self == ClusterLayout()


class QdrantServerStore:
    """Contract store on one collection of a Qdrant server."""

    def save_watermarks(self, topic: str, watermarks: Mapping[str, int]) -> None:
        """One vector-less point per (topic, partition) in `<collection>_watermarks`: in a
        cluster each process publishes the partitions it owns, and never overwrites others'."""
        if not watermarks:
            return
        name = f"{self.collection}_watermarks"
        if not self.client.collection_exists(name):
            try:
                shard_number, replicas, consistency = self._layout(shards=1)
                self.client.create_collection(
                    name,
                    vectors_config={},
                    shard_number=shard_number,
                    replication_factor=replicas,
                    write_consistency_factor=consistency,
                )
            except Exception:
                if not self.client.collection_exists(name):  # else: another process made it
                    raise
        points = [
            models.PointStruct(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"watermarks/{topic}/{partition}")),
                vector={},
                payload={"topic": topic, "partition": str(partition), "offset": int(offset)},
            )
            for partition, offset in watermarks.items()
        ]
        self.client.upsert(name, points=points, wait=True)

    def load_watermarks(self, topic: str) -> dict[str, int]:
        name = f"{self.collection}_watermarks"
        if not self.client.collection_exists(name):
            return {}
        out: dict[str, int] = {}
        legacy: dict[str, int] = {}  # one point per topic, as published before clusters
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                name,
                scroll_filter=models.Filter(must=[_match("topic", topic)]),
                limit=SCROLL_PAGE,
                offset=offset,
                with_payload=True,
            )
            for record in records:
                payload = record.payload or {}
                if "partition" in payload:
                    out[str(payload["partition"])] = int(payload["offset"])
                for k, v in (payload.get("partitions") or {}).items():
                    legacy[str(k)] = int(v)
            if offset is None:
                return {**legacy, **out}

    def __init__(
        self,
        client: QdrantClient,
        collection: str = DEFAULT_COLLECTION,
        layout: ClusterLayout | None = None,
        dense_dim: int = DENSE_DIM,
    ) -> None:
        self.client = client
        self.collection = collection
        self.layout = layout or ClusterLayout()
        self.dense_dim = dense_dim

    @classmethod
    def from_url(
        cls,
        url: str,
        api_key: str | None = None,
        collection: str = DEFAULT_COLLECTION,
        layout: ClusterLayout | None = None,
        dense_dim: int = DENSE_DIM,
    ) -> QdrantServerStore:
        """A store on a remote server. No client/server version check: the index contract uses
        only long-stable APIs, and qdrant-client warns on every minor-version gap."""
        client = QdrantClient(url=url, api_key=api_key, check_compatibility=False)
        return cls(client, collection, layout, dense_dim)

    def cluster_peers(self) -> int:
        """Peers of the server's Raft cluster; 0 when it runs standalone (or is `:memory:`)."""
        try:
            status = self.client.http.distributed_api.cluster_status().result
        except Exception:  # local mode has no HTTP API; a standalone server says "disabled"
            return 0
        peers = getattr(status, "peers", None)
        return len(peers) if peers else 0

    def _layout(self, shards: int | None = None) -> tuple[int | None, int | None, int | None]:
        """(shards, replicas, write consistency) of a new collection: as configured, else one
        shard per peer and two copies of each when the server runs as a cluster; None: the
        server's default."""
        peers = self.cluster_peers()
        if peers <= 1 and self.layout.is_default():
            return None, None, None
        replicas = self.layout.replication_factor or min(2, max(1, peers))
        return (
            shards or self.layout.shards or max(1, peers),
            replicas,
            min(self.layout.write_consistency, replicas),
        )

    def ensure_collection(self, settle_s: float = 120.0) -> None:
        """Create the collection with its payload indexes, or verify an existing one.

        Processes of a deployment start together: a collection another one has just created
        can answer 5xx for a moment on a cluster (its shards are still being placed), and a
        peer can still be starting. Such errors are retried for `settle_s`; a contract
        mismatch is not."""
        retrying = Retrying(
            retry=retry_if_exception(_transient),
            wait=wait_exponential(multiplier=0.2, max=3),
            stop=stop_after_delay(settle_s),
            reraise=True,
        )
        retrying(self._ensure_collection_once)

    def _ensure_collection_once(self) -> None:
        if self.client.collection_exists(self.collection):
            self._verify(self.client.get_collection(self.collection))
        else:
            shard_number, replicas, consistency = self._layout()
            try:
                self.client.create_collection(
                    self.collection,
                    vectors_config={
                        DENSE_VECTOR: models.VectorParams(
                            size=self.dense_dim, distance=models.Distance.COSINE
                        )
                    },
                    sparse_vectors_config={
                        SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
                    },
                    shard_number=shard_number,
                    replication_factor=replicas,
                    write_consistency_factor=consistency,
                )
            except Exception:
                # Another process may have created it first: fine if it matches the contract.
                if not self.client.collection_exists(self.collection):
                    raise
                self._verify(self.client.get_collection(self.collection))
        self._ensure_payload_indexes()

    def _verify(self, info: models.CollectionInfo) -> None:
        """Raise SchemaMismatchError describing every difference from the index contract."""
        name = self.collection
        problems: list[str] = []
        vectors = info.config.params.vectors
        dense = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else None
        if dense is None:
            problems.append(f"collection {name!r} has no dense vector {DENSE_VECTOR!r}")
        else:
            if dense.size != self.dense_dim:
                problems.append(
                    f"collection {name!r} has dense size {dense.size}, expected {self.dense_dim}"
                )
            if dense.distance != models.Distance.COSINE:
                problems.append(
                    f"collection {name!r} has dense distance {dense.distance}, expected Cosine"
                )
        sparse = (info.config.params.sparse_vectors or {}).get(SPARSE_VECTOR)
        if sparse is None:
            problems.append(f"collection {name!r} has no sparse vector {SPARSE_VECTOR!r}")
        elif sparse.modifier != models.Modifier.IDF:
            problems.append(
                f"collection {name!r} sparse vector {SPARSE_VECTOR!r} has modifier "
                f"{sparse.modifier}, expected idf"
            )
        for field_name, kind in PAYLOAD_INDEXES.items():
            existing = info.payload_schema.get(field_name)
            if existing is not None and existing.data_type != _index_data_type(kind):
                problems.append(
                    f"collection {name!r} indexes {field_name!r} as {existing.data_type}, "
                    f"expected {kind}"
                )
        if problems:
            raise SchemaMismatchError("; ".join(problems))

    def _ensure_payload_indexes(self) -> None:
        existing = self.client.get_collection(self.collection).payload_schema
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_LOCAL_INDEX_WARNING)
            for field_name, kind in PAYLOAD_INDEXES.items():
                if field_name not in existing:
                    self.client.create_payload_index(
                        self.collection, field_name, field_schema=_index_schema(kind), wait=True
                    )

    def close(self) -> None:
        self.client.close()

    # -- writes ------------------------------------------------------------------------------

    def upsert_chunks(self, chunks: Sequence[ChunkPoint]) -> None:
        for start in range(0, len(chunks), UPSERT_BATCH):
            points = [
                models.PointStruct(
                    id=c.id,
                    vector={
                        DENSE_VECTOR: [float(x) for x in c.dense],
                        SPARSE_VECTOR: models.SparseVector(
                            indices=list(c.sparse.indices),
                            values=[float(v) for v in c.sparse.values],
                        ),
                    },
                    payload=c.payload(),
                )
                for c in chunks[start : start + UPSERT_BATCH]
            ]
            self.client.upsert(self.collection, points=points, wait=True)

    def _delete(self, flt: models.Filter) -> None:
        self.client.delete(
            self.collection, points_selector=models.FilterSelector(filter=flt), wait=True
        )

    def delete_versions_below(
        self, tenant: str, doc_id: str, version: int, keep_chunks: int | None = None
    ) -> None:
        stale: list[models.Condition] = [
            models.FieldCondition(key="version", range=models.Range(lt=version))
        ]
        if keep_chunks is not None:
            stale.append(
                models.Filter(
                    must=[
                        _match("version", version),
                        models.FieldCondition(
                            key="chunk_index", range=models.Range(gte=keep_chunks)
                        ),
                    ]
                )
            )
        self._delete(
            models.Filter(must=[_match("tenant", tenant), _match("doc_id", doc_id)], should=stale)
        )

    def delete_document(self, tenant: str, doc_id: str, up_to_version: int | None = None) -> None:
        extra: list[models.Condition] = []
        if up_to_version is not None:
            extra.append(
                models.FieldCondition(key="version", range=models.Range(lte=up_to_version))
            )
        self._delete(_doc_filter(tenant, doc_id, *extra))

    def patch_document(self, tenant: str, doc_id: str, payload: Mapping[str, Any]) -> None:
        self.client.set_payload(
            self.collection,
            payload=dict(payload),
            points=models.FilterSelector(filter=_doc_filter(tenant, doc_id)),
            wait=True,
        )

    # -- reads -------------------------------------------------------------------------------

    def chunk_vectors(self, tenant: str, doc_ids: Sequence[str]) -> dict[str, StoredVectors]:
        if not doc_ids:
            return {}
        flt = models.Filter(must=[_match("tenant", tenant), _match_any("doc_id", list(doc_ids))])
        out: dict[str, StoredVectors] = {}
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                self.collection,
                scroll_filter=flt,
                limit=SCROLL_PAGE,
                offset=offset,
                with_payload=["chunk_hash"],
                with_vectors=True,
            )
            for rec in records:
                digest = (rec.payload or {}).get("chunk_hash")
                vec: Any = rec.vector or {}
                if (
                    digest
                    and isinstance(vec, dict)
                    and DENSE_VECTOR in vec
                    and SPARSE_VECTOR in vec
                ):
                    sp = vec[SPARSE_VECTOR]
                    out[str(digest)] = (
                        list(vec[DENSE_VECTOR]),
                        SparseVector(list(sp.indices), list(sp.values)),
                    )
            if offset is None:
                return out

    def _scroll(
        self, flt: models.Filter | None, fields: list[str] | None
    ) -> Iterator[dict[str, Any]]:
        """Every matching payload, page by page (`fields=None` means the whole payload)."""
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                self.collection,
                scroll_filter=flt,
                limit=SCROLL_PAGE,
                offset=offset,
                with_payload=True if fields is None else fields,
                with_vectors=False,
            )
            for rec in records:
                yield dict(rec.payload or {})
            if offset is None:
                return

    def document_status(
        self, tenant: str, doc_id: str, principals: Sequence[str] | None = None
    ) -> DocumentStatus | None:
        fields = ["version", "indexed_at", "updated_at"]
        extra = [] if principals is None else [acl_condition(principals)]
        payloads = list(self._scroll(_doc_filter(tenant, doc_id, *extra), fields))
        return status_from_payloads(tenant, doc_id, payloads)

    def document_versions(self, tenant: str, doc_ids: Sequence[str]) -> dict[str, int]:
        if not doc_ids:
            return {}
        flt = models.Filter(must=[_match("tenant", tenant), _match_any("doc_id", list(doc_ids))])
        return versions_from_payloads(self._scroll(flt, ["doc_id", "version"]))

    def chunk_layouts(
        self, tenant: str | None, doc_ids: Sequence[str]
    ) -> dict[tuple[str, str], list[ChunkLayout]]:
        if not doc_ids:
            return {}
        must: list[models.Condition] = [_match_any("doc_id", list(doc_ids))]
        if tenant is not None:
            must.insert(0, _match("tenant", tenant))
        return layouts_from_payloads(self._scroll(models.Filter(must=must), LAYOUT_FIELDS))

    def count(self, tenant: str | None = None) -> int:
        result = self.client.count(self.collection, count_filter=_tenant_filter(tenant), exact=True)
        return int(result.count)

    def _query(
        self, query: list[float] | models.SparseVector, using: str, flt: SearchFilter, limit: int
    ) -> list[Hit]:
        response = self.client.query_points(
            self.collection,
            query=query,
            using=using,
            query_filter=build_filter(flt),
            limit=limit,
            with_payload=True,
            with_vectors=False,
        )
        hits = [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points]
        return sorted(hits, key=hit_order)

    def query_dense(self, vector: Sequence[float], flt: SearchFilter, limit: int) -> list[Hit]:
        return self._query([float(x) for x in vector], DENSE_VECTOR, flt, limit)

    def query_sparse(self, vector: SparseVector, flt: SearchFilter, limit: int) -> list[Hit]:
        if not vector.indices:
            return []
        sparse = models.SparseVector(
            indices=list(vector.indices), values=[float(v) for v in vector.values]
        )
        return self._query(sparse, SPARSE_VECTOR, flt, limit)

    def scroll_payloads(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return list(self._scroll(_tenant_filter(tenant), None))
