"""Pick a `Store` backend from plain arguments, plus the pure helpers both backends share.

Backends are imported inside `open_store` so the Edge-only path never imports the server client
(and vice versa), and so the backends can import the helpers here without a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from freshrag.core.settings import Settings
from freshrag.retrieve.contract import (
    DEFAULT_COLLECTION,
    ChunkLayout,
    DocumentStatus,
    Hit,
    Store,
    layout_of,
)


def open_store(
    qdrant_url: str | None,
    index_path: Path,
    collection: str = DEFAULT_COLLECTION,
    api_key: str | None = None,
    *,
    shards: int | None = None,
    replication_factor: int | None = None,
    write_consistency: int = 1,
) -> Store:
    """Qdrant server when a URL is configured, else the embedded Edge shard under `index_path`.

    The store is returned unopened: call `ensure_collection()` before use (Edge also opens
    lazily on first use).
    """
    if qdrant_url:
        from freshrag.retrieve.server_store import ClusterLayout, QdrantServerStore

        layout = ClusterLayout(shards, replication_factor, write_consistency)
        return QdrantServerStore.from_url(qdrant_url, api_key, collection, layout)
    from freshrag.retrieve.edge_store import EdgeStore

    return EdgeStore(Path(index_path), collection=collection)


def open_settings_store(settings: Settings) -> Store:
    """The store the settings name, with its collection created (or checked)."""
    store = open_store(
        settings.qdrant_url,
        settings.index_path,
        settings.collection,
        api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
        shards=settings.qdrant_shards,
        replication_factor=settings.qdrant_replication_factor,
        write_consistency=settings.qdrant_write_consistency,
    )
    store.ensure_collection()
    return store


def hit_order(hit: Hit) -> tuple[float, str]:
    """Score order with a stable tie-break on point id, so both backends rank ties alike."""
    return (-hit.score, hit.point_id)


def as_aware(value: datetime) -> datetime:
    """A filter bound with a timezone; a naive datetime is taken as UTC in both backends."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def iso_utc(value: datetime) -> str:
    """ISO-8601 text of `as_aware(value)` (the Edge binding takes datetime bounds as strings)."""
    return as_aware(value).isoformat()


def _instant(value: Any) -> tuple[float, str]:
    """Sort key for a stored ISO timestamp; naive means UTC, unparsable sorts first."""
    text = str(value or "")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return (float("-inf"), text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed.timestamp(), text)


def status_from_payloads(
    tenant: str, doc_id: str, payloads: Sequence[dict[str, Any]]
) -> DocumentStatus | None:
    """Status of a document's newest version from its points' payloads (None if no points)."""
    if not payloads:
        return None
    top = max(int(p["version"]) for p in payloads)
    current = [p for p in payloads if int(p["version"]) == top]
    newest = max(current, key=lambda p: _instant(p.get("indexed_at")))
    return DocumentStatus(
        tenant=tenant,
        doc_id=doc_id,
        version=top,
        chunk_count=len(current),
        indexed_at=str(newest.get("indexed_at", "")),
        updated_at=str(newest.get("updated_at", "")),
    )


def versions_from_payloads(payloads: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Highest version per doc_id among the given payloads."""
    out: dict[str, int] = {}
    for p in payloads:
        doc, version = str(p["doc_id"]), int(p["version"])
        if doc not in out or version > out[doc]:
            out[doc] = version
    return out


LAYOUT_FIELDS = ["tenant", "doc_id", "version", "offset", "chunk_index", "chunk_count"]


def layouts_from_payloads(
    payloads: Iterable[dict[str, Any]],
) -> dict[tuple[str, str], list[ChunkLayout]]:
    """(tenant, doc_id) -> each point's layout, from payloads holding LAYOUT_FIELDS."""
    out: dict[tuple[str, str], list[ChunkLayout]] = {}
    for p in payloads:
        out.setdefault((str(p["tenant"]), str(p["doc_id"])), []).append(layout_of(p))
    return out
