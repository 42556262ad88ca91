"""`Store` on a Qdrant server (or `QdrantClient(":memory:")` in tests) via qdrant-client.

Every write uses `wait=True`, so a write is visible to searches when the call returns; ingest
relies on that to delete stale versions right after upserting the new one.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from qdrant_client import QdrantClient, models

from freshrag.retrieve.contract import (
    DEFAULT_COLLECTION,
    DENSE_DIM,
    DENSE_VECTOR,
    PAYLOAD_INDEXES,
    SPARSE_VECTOR,
    ChunkLayout,
    ChunkPoint,
    DocumentStatus,
    Hit,
    SchemaMismatchError,
    SearchFilter,
    SparseVector,
)
from freshrag.retrieve.stores import (
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
    return models.Filter(must=must)


class QdrantServerStore:
    """Contract store on one collection of a Qdrant server."""

    def save_watermarks(self, topic: str, watermarks: Mapping[str, int]) -> None:
        """One vector-less point per topic in `<collection>_watermarks`."""
        name = f"{self.collection}_watermarks"
        if not self.client.collection_exists(name):
            self.client.create_collection(name, vectors_config={})
        point = models.PointStruct(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"watermarks/{topic}")),
            vector={},
            payload={"topic": topic, "partitions": dict(watermarks)},
        )
        self.client.upsert(name, points=[point], wait=True)

    def load_watermarks(self, topic: str) -> dict[str, int]:
        name = f"{self.collection}_watermarks"
        if not self.client.collection_exists(name):
            return {}
        records = self.client.retrieve(
            name, [str(uuid.uuid5(uuid.NAMESPACE_URL, f"watermarks/{topic}"))], with_payload=True
        )
        if not records or not records[0].payload:
            return {}
        partitions = records[0].payload.get("partitions") or {}
        return {str(k): int(v) for k, v in partitions.items()}

    def __init__(self, client: QdrantClient, collection: str = DEFAULT_COLLECTION) -> None:
        self.client = client
        self.collection = collection

    @classmethod
    def from_url(
        cls, url: str, api_key: str | None = None, collection: str = DEFAULT_COLLECTION
    ) -> QdrantServerStore:
        """A store on a remote server. No client/server version check: the index contract uses
        only long-stable APIs, and qdrant-client warns on every minor-version gap."""
        return cls(QdrantClient(url=url, api_key=api_key, check_compatibility=False), collection)

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_collection(self) -> None:
        """Create the collection with its payload indexes, or verify an existing one."""
        if self.client.collection_exists(self.collection):
            self._verify(self.client.get_collection(self.collection))
        else:
            try:
                self.client.create_collection(
                    self.collection,
                    vectors_config={
                        DENSE_VECTOR: models.VectorParams(
                            size=DENSE_DIM, distance=models.Distance.COSINE
                        )
                    },
                    sparse_vectors_config={
                        SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
                    },
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
            if dense.size != DENSE_DIM:
                problems.append(
                    f"collection {name!r} has dense size {dense.size}, expected {DENSE_DIM}"
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

    # -- reads -------------------------------------------------------------------------------

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

    def document_status(self, tenant: str, doc_id: str) -> DocumentStatus | None:
        fields = ["version", "indexed_at", "updated_at"]
        payloads = list(self._scroll(_doc_filter(tenant, doc_id), fields))
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
