"""The index contract shared by every writer and reader of the Qdrant collection (pure).

One point per chunk; its ID is uuid5 of `tenant/doc_id#chunk_index`, so replays are idempotent.
The payload (doc_id + version) is the source of truth: there is no side tracking store.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

# re-exported: the contract's points carry one (it lives beside the BM25 encoder)
from freshrag.core.sparse import SparseVector as SparseVector

DENSE_VECTOR = "dense"
SPARSE_VECTOR = "bm25"
DENSE_DIM = 384
DEFAULT_COLLECTION = "freshrag"

# Fixed namespace so every process derives the same point IDs.
POINT_NAMESPACE = uuid.UUID("6f1c3b0e-5a8e-4f4e-9d7e-2b8f0c6a1d42")

# Payload index field -> kind. `tenant` is a tenant index (co-locates a tenant's points).
PAYLOAD_INDEXES: Mapping[str, str] = {
    "tenant": "keyword_tenant",
    "doc_id": "keyword",
    "updated_at": "datetime",
    "version": "integer",
    "acl": "keyword",
}

# `acl` payload of a document readable by its whole tenant (no `acl` in its event).
EVERYONE = "*"
# `acl` payload of a document no caller may read (an `acl` with no users and no groups).
NOBODY = "nobody"


def acl_payload(acl: Sequence[str] | None) -> list[str]:
    """The stored `acl`: the principals allowed to read ("user:alice", "group:eng"), or
    [EVERYONE]. Points written before ACLs existed have none and count as [EVERYONE]."""
    if acl is None:
        return [EVERYONE]
    # an empty list would read as "no acl" (Qdrant's is_empty), i.e. readable by all
    return sorted(set(acl)) or [NOBODY]


def text_hash(*parts: str) -> str:
    """Short stable hash of texts (NUL-separated): what a chunk embedded, what a document said."""
    import hashlib

    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:24]


class SchemaMismatchError(RuntimeError):
    """An existing collection does not match the index contract; nothing was written."""


def point_id(tenant: str, doc_id: str, chunk_index: int) -> str:
    """Deterministic point ID: the same chunk of the same document always lands on one point."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{tenant}/{doc_id}#{chunk_index}"))


@dataclass(frozen=True, slots=True)
class ChunkPoint:
    """One chunk ready to write: vectors plus the contract payload."""

    tenant: str
    doc_id: str
    version: int
    chunk_index: int
    chunk_count: int
    text: str
    title: str
    url: str | None
    source: str | None
    updated_at: datetime
    indexed_at: datetime
    metadata: Mapping[str, Any]
    dense: Sequence[float]
    sparse: SparseVector
    heading: str = ""
    # where the change event came from: provenance, and the tie-break of equal versions
    topic: str = ""
    partition: int = -1
    offset: int = -1
    acl: Sequence[str] | None = None  # None: the whole tenant may read it
    # hash of the exact text embedded (+ the generation's build fingerprint): vectors of an
    # unchanged chunk are reused by the next version; "" when unknown
    chunk_hash: str = ""
    # hash of the document's title + text: a new version with the same one only patches payloads
    # (no build fingerprint: one generation holds one build)
    content_hash: str = ""

    @property
    def id(self) -> str:
        return point_id(self.tenant, self.doc_id, self.chunk_index)

    def payload(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "doc_id": self.doc_id,
            "version": self.version,
            "chunk_index": self.chunk_index,
            "chunk_count": self.chunk_count,
            "text": self.text,
            "title": self.title,
            "heading": self.heading,
            "url": self.url,
            "source": self.source,
            "updated_at": self.updated_at.isoformat(),
            "indexed_at": self.indexed_at.isoformat(),
            "metadata": dict(self.metadata),
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "acl": acl_payload(self.acl),
            "chunk_hash": self.chunk_hash,
            "content_hash": self.content_hash,
        }


# A stored chunk's vectors, reused when an edit leaves its text unchanged.
StoredVectors = tuple[Sequence[float], SparseVector]


class ChunkLayout(NamedTuple):
    """What the index holds of one point: enough to prove a document is complete, and (its
    content hash) whether a new version changes its text at all."""

    version: int
    offset: int
    chunk_index: int
    chunk_count: int
    content_hash: str = ""


def layout_of(payload: Mapping[str, Any]) -> ChunkLayout:
    """A point's layout from its payload (points written before offsets were stored: -1)."""
    return ChunkLayout(
        int(payload["version"]),
        int(payload.get("offset", -1) if payload.get("offset") is not None else -1),
        int(payload["chunk_index"]),
        int(payload["chunk_count"]),
        str(payload.get("content_hash") or ""),
    )


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """Server-side filter. `tenant` is always set from the caller's identity, never the body."""

    tenant: str
    metadata_equals: Mapping[str, str | int | bool] = field(default_factory=dict)
    metadata_any: Mapping[str, Sequence[str | int]] = field(default_factory=dict)
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    doc_ids: Sequence[str] | None = None
    # The caller's principals ("user:alice", "group:eng"; EVERYONE is implied): a point matches
    # when its `acl` holds one of them, or it has no `acl` (written before ACLs). None: no ACL
    # condition, for internal tools only (eval, verify, CLI); the API always sets it.
    principals: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    """One scored chunk, as returned by a store or by ranking."""

    point_id: str
    score: float
    payload: Mapping[str, Any]

    @property
    def doc_id(self) -> str:
        return str(self.payload["doc_id"])


@dataclass(frozen=True, slots=True)
class DocumentStatus:
    tenant: str
    doc_id: str
    version: int
    chunk_count: int
    indexed_at: str
    updated_at: str


@runtime_checkable
class Store(Protocol):
    """What ingest writes through and search reads through; one per backend."""

    def ensure_collection(self) -> None:
        """Create the collection and payload indexes, or check an existing one matches."""

    def upsert_chunks(self, chunks: Sequence[ChunkPoint]) -> None: ...

    def delete_versions_below(
        self, tenant: str, doc_id: str, version: int, keep_chunks: int | None = None
    ) -> None:
        """Delete the document's points with version < `version` (stale chunks after upsert),
        and, with `keep_chunks=n`, its points of `version` with chunk_index >= n (the tail of an
        earlier write of the same version)."""

    def delete_document(self, tenant: str, doc_id: str, up_to_version: int | None = None) -> None:
        """Delete the document's points with version <= `up_to_version` (all when None)."""

    def document_status(
        self, tenant: str, doc_id: str, principals: Sequence[str] | None = None
    ) -> DocumentStatus | None:
        """None when the tenant has no such document, or (`principals` given) none of its
        points is readable by them (see `SearchFilter.principals`)."""

    def patch_document(self, tenant: str, doc_id: str, payload: Mapping[str, Any]) -> None:
        """Set `payload`'s fields on every point of the document (a metadata-only change)."""

    def chunk_vectors(self, tenant: str, doc_ids: Sequence[str]) -> dict[str, StoredVectors]:
        """{chunk_hash: (dense, sparse)} of the documents' points that have a chunk hash."""

    def document_versions(self, tenant: str, doc_ids: Sequence[str]) -> dict[str, int]:
        """Highest indexed version per document (absent docs are left out)."""

    def chunk_layouts(
        self, tenant: str | None, doc_ids: Sequence[str]
    ) -> dict[tuple[str, str], list[ChunkLayout]]:
        """(tenant, doc_id) -> the layout of each of its points; `tenant=None`: every tenant."""

    def count(self, tenant: str | None = None) -> int: ...

    def query_dense(self, vector: Sequence[float], flt: SearchFilter, limit: int) -> list[Hit]: ...

    def query_sparse(self, vector: SparseVector, flt: SearchFilter, limit: int) -> list[Hit]: ...

    def save_watermarks(self, topic: str, watermarks: Mapping[str, int]) -> None:
        """Publish indexed watermarks ({partition: offset}) for API readers. Merged per
        partition: partitions the call does not name keep their last published value (in a
        cluster each process publishes the partitions whose watermark it owns)."""

    def load_watermarks(self, topic: str) -> dict[str, int]:
        """The last published watermarks of `topic` ({} when none)."""

    def scroll_payloads(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every point's payload (tests, audits and small exports; not for hot paths)."""

    def close(self) -> None: ...
