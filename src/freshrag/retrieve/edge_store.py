"""`Store` on an embedded Qdrant Edge shard: the index runs in-process, no server needed.

One shard directory per collection (`path/collection`). The shard itself allows reads from one
thread while another writes, so data operations take no lock; a lock only guards opening and
closing, so a concurrent `close()` cannot race a lazy open.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe

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
    hit_order,
    iso_utc,
    layouts_from_payloads,
    status_from_payloads,
    versions_from_payloads,
)

UPSERT_BATCH = 256
SCROLL_PAGE = 512
_EDGE_CONFIG_FILE = "edge_config.json"  # written by the shard; read only to explain a mismatch


def _expected_config() -> Any:
    """The contract's vector layout; also passed to `load` so the engine verifies it."""
    return qe.EdgeConfig(
        vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=DENSE_DIM, distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
    )


def _index_schema(kind: str) -> Any:
    """Edge payload index schema for a PAYLOAD_INDEXES kind."""
    if kind == "keyword_tenant":
        return qe.KeywordIndexParams(is_tenant=True)
    simple = {
        "keyword": qe.PayloadSchemaType.Keyword,
        "datetime": qe.PayloadSchemaType.Datetime,
        "integer": qe.PayloadSchemaType.Integer,
    }
    return simple[kind]


def _index_data_type(kind: str) -> Any:
    """The PayloadSchemaType an existing index of `kind` must report."""
    return {
        "keyword_tenant": qe.PayloadSchemaType.Keyword,
        "keyword": qe.PayloadSchemaType.Keyword,
        "datetime": qe.PayloadSchemaType.Datetime,
        "integer": qe.PayloadSchemaType.Integer,
    }[kind]


def _config_problems(collection: str, shard_dir: Path) -> list[str]:
    """Readable differences from the contract, from the shard's persisted config (best effort).

    The engine's own check in `EdgeShard.load(path, config)` stays authoritative; this only
    turns its terse error into messages like "dense size 128, expected 384".
    """
    try:
        raw = json.loads((shard_dir / _EDGE_CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return []
    problems: list[str] = []
    vectors = raw.get("vectors") or {}
    dense = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else None
    if not isinstance(dense, dict):
        problems.append(f"collection {collection!r} has no dense vector {DENSE_VECTOR!r}")
    else:
        if dense.get("size") != DENSE_DIM:
            problems.append(
                f"collection {collection!r} has dense size {dense.get('size')}, "
                f"expected {DENSE_DIM}"
            )
        if str(dense.get("distance", "")).lower() != "cosine":
            problems.append(
                f"collection {collection!r} has dense distance {dense.get('distance')}, "
                "expected Cosine"
            )
    sparse = (raw.get("sparse_vectors") or {}).get(SPARSE_VECTOR)
    if not isinstance(sparse, dict):
        problems.append(f"collection {collection!r} has no sparse vector {SPARSE_VECTOR!r}")
    elif str(sparse.get("modifier", "")).lower() != "idf":
        problems.append(
            f"collection {collection!r} sparse vector {SPARSE_VECTOR!r} has modifier "
            f"{sparse.get('modifier')}, expected idf"
        )
    return problems


def _match(key: str, value: Any) -> Any:
    return qe.FieldCondition(key, match=qe.MatchValue(value))


def _match_any(key: str, values: Sequence[Any]) -> Any:
    return qe.FieldCondition(key, match=qe.MatchAny(list(values)))


def _doc_filter(tenant: str, doc_id: str, *extra: Any) -> Any:
    return qe.Filter(must=[_match("tenant", tenant), _match("doc_id", doc_id), *extra])


def build_filter(flt: SearchFilter) -> Any:
    """SearchFilter -> Edge Filter; the tenant condition is always present."""
    must: list[Any] = [_match("tenant", flt.tenant)]
    for key, value in flt.metadata_equals.items():
        must.append(_match(f"metadata.{key}", value))
    for key, values in flt.metadata_any.items():
        must.append(_match_any(f"metadata.{key}", values))
    if flt.updated_after is not None or flt.updated_before is not None:
        must.append(
            qe.FieldCondition(
                "updated_at",
                range=qe.RangeDateTime(
                    gte=iso_utc(flt.updated_after) if flt.updated_after else None,
                    lte=iso_utc(flt.updated_before) if flt.updated_before else None,
                ),
            )
        )
    if flt.doc_ids is not None:
        must.append(_match_any("doc_id", flt.doc_ids))
    return qe.Filter(must=must)


class EdgeStore:
    """Contract store on a local Qdrant Edge shard at `path/collection`."""

    def __init__(self, path: Path, collection: str = DEFAULT_COLLECTION) -> None:
        self.path = Path(path)
        self.collection = collection
        self.shard_dir = self.path / collection
        self._shard: Any | None = None
        self._closed = False
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_collection(self) -> None:
        """Create the shard with its payload indexes, or load it and verify the vector layout."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"EdgeStore {self.shard_dir} is closed")
            shard = self._shard if self._shard is not None else self._open()
            try:
                self._ensure_payload_indexes(shard)
            except BaseException:
                if self._shard is None:  # opened just now: don't keep a half-checked shard
                    shard.close()
                raise
            self._shard = shard

    def _exists(self) -> bool:
        segments = self.shard_dir / "segments"
        return (self.shard_dir / _EDGE_CONFIG_FILE).exists() or (
            segments.is_dir() and any(segments.iterdir())
        )

    def _open(self) -> Any:
        if not self._exists():
            self.shard_dir.mkdir(parents=True, exist_ok=True)
            return qe.EdgeShard.create(str(self.shard_dir), _expected_config())
        problems = _config_problems(self.collection, self.shard_dir)
        if problems:
            raise SchemaMismatchError("; ".join(problems))
        try:
            return qe.EdgeShard.load(str(self.shard_dir), _expected_config())
        except Exception as exc:  # the binding raises a bare Exception
            if "incompatible" in str(exc).lower():
                raise SchemaMismatchError(
                    f"collection {self.collection!r} at {self.shard_dir} does not match the "
                    f"index contract: {exc}"
                ) from exc
            raise

    def _ensure_payload_indexes(self, shard: Any) -> None:
        """Check every existing index first, so a mismatch raises before anything is written."""
        existing = shard.info().payload_schema
        problems = [
            f"collection {self.collection!r} indexes {name!r} as "
            f"{existing[name].data_type}, expected {kind}"
            for name, kind in PAYLOAD_INDEXES.items()
            if name in existing and existing[name].data_type != _index_data_type(kind)
        ]
        if problems:
            raise SchemaMismatchError("; ".join(problems))
        for name, kind in PAYLOAD_INDEXES.items():
            if name not in existing:
                shard.update(qe.UpdateOperation.create_field_index(name, _index_schema(kind)))

    def _s(self) -> Any:
        """The open shard; opens (and verifies) it lazily on first use."""
        shard = self._shard
        if shard is None:
            self.ensure_collection()
            shard = self._shard
        return shard

    def optimize(self) -> bool:
        """Build the HNSW and payload indexes. Edge does not do this in the background, and until
        it runs, dense search is a full scan (p99 42 ms at 100k points instead of 13 ms). It
        blocks other calls on the shard while it runs (about 20 s at 10k points, minutes at
        100k), so run it offline: `freshrag optimize` with `freshrag up` stopped."""
        return bool(self._s().optimize())

    # -- watermarks: a small JSON file beside the shard, replaced atomically -------------------

    def _watermark_file(self, topic: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in topic)
        return self.path / f"{self.collection}.watermarks.{safe}.json"

    def save_watermarks(self, topic: str, watermarks: Mapping[str, int]) -> None:
        target = self._watermark_file(topic)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(watermarks)))
        os.replace(tmp, target)

    def load_watermarks(self, topic: str) -> dict[str, int]:
        try:
            data = json.loads(self._watermark_file(topic).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()}

    def flush(self) -> None:
        """Persist pending writes (the WAL already makes them durable; this speeds reopening)."""
        if self._shard is not None:
            self._shard.flush()

    def close(self) -> None:
        """Flush and release the shard; a new EdgeStore on the same path sees all data."""
        with self._lock:
            shard, self._shard = self._shard, None
            self._closed = True
            if shard is not None:
                shard.flush()
                shard.close()

    # -- writes ------------------------------------------------------------------------------

    def upsert_chunks(self, chunks: Sequence[ChunkPoint]) -> None:
        if not chunks:
            return
        shard = self._s()
        for start in range(0, len(chunks), UPSERT_BATCH):
            points = [
                qe.Point(
                    c.id,
                    {
                        DENSE_VECTOR: [float(x) for x in c.dense],
                        SPARSE_VECTOR: qe.SparseVector(
                            list(c.sparse.indices), [float(v) for v in c.sparse.values]
                        ),
                    },
                    c.payload(),
                )
                for c in chunks[start : start + UPSERT_BATCH]
            ]
            shard.update(qe.UpdateOperation.upsert_points(points))

    def delete_versions_below(
        self, tenant: str, doc_id: str, version: int, keep_chunks: int | None = None
    ) -> None:
        stale: list[Any] = [qe.FieldCondition("version", range=qe.RangeFloat(lt=version))]
        if keep_chunks is not None:
            stale.append(
                qe.Filter(
                    must=[
                        _match("version", version),
                        qe.FieldCondition("chunk_index", range=qe.RangeFloat(gte=keep_chunks)),
                    ]
                )
            )
        flt = qe.Filter(must=[_match("tenant", tenant), _match("doc_id", doc_id)], should=stale)
        self._s().update(qe.UpdateOperation.delete_points_by_filter(flt))

    def delete_document(self, tenant: str, doc_id: str, up_to_version: int | None = None) -> None:
        extra = []
        if up_to_version is not None:
            extra.append(qe.FieldCondition("version", range=qe.RangeFloat(lte=up_to_version)))
        flt = _doc_filter(tenant, doc_id, *extra)
        self._s().update(qe.UpdateOperation.delete_points_by_filter(flt))

    # -- reads -------------------------------------------------------------------------------

    def _scroll(self, flt: Any, fields: list[str] | None) -> Iterator[dict[str, Any]]:
        """Every matching payload, page by page (`fields=None` means the whole payload)."""
        shard = self._s()
        with_payload: Any = True if fields is None else qe.PayloadSelector.Include(fields)
        offset: Any = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(
                    offset=offset,
                    limit=SCROLL_PAGE,
                    filter=flt,
                    with_payload=with_payload,
                    with_vector=False,
                )
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
        flt = qe.Filter(must=[_match("tenant", tenant), _match_any("doc_id", list(doc_ids))])
        return versions_from_payloads(self._scroll(flt, ["doc_id", "version"]))

    def chunk_layouts(
        self, tenant: str | None, doc_ids: Sequence[str]
    ) -> dict[tuple[str, str], list[ChunkLayout]]:
        if not doc_ids:
            return {}
        must = [_match_any("doc_id", list(doc_ids))]
        if tenant is not None:
            must.insert(0, _match("tenant", tenant))
        return layouts_from_payloads(self._scroll(qe.Filter(must=must), LAYOUT_FIELDS))

    def count(self, tenant: str | None = None) -> int:
        flt = qe.Filter(must=[_match("tenant", tenant)]) if tenant is not None else None
        return int(self._s().count(qe.CountRequest(exact=True, filter=flt)))

    def _query(self, vector: Any, using: str, flt: SearchFilter, limit: int) -> list[Hit]:
        points = self._s().query(
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(vector, using=using),
                filter=build_filter(flt),
                with_payload=True,
                with_vector=False,
            )
        )
        hits = [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]
        return sorted(hits, key=hit_order)

    def query_dense(self, vector: Sequence[float], flt: SearchFilter, limit: int) -> list[Hit]:
        return self._query([float(x) for x in vector], DENSE_VECTOR, flt, limit)

    def query_sparse(self, vector: SparseVector, flt: SearchFilter, limit: int) -> list[Hit]:
        if not vector.indices:
            return []
        sparse = qe.SparseVector(list(vector.indices), [float(v) for v in vector.values])
        return self._query(sparse, SPARSE_VECTOR, flt, limit)

    def scroll_payloads(self, tenant: str | None = None) -> list[dict[str, Any]]:
        flt = qe.Filter(must=[_match("tenant", tenant)]) if tenant is not None else None
        return list(self._scroll(flt, None))
