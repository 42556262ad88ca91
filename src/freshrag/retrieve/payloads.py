"""Pure helpers both store backends share: hit order, datetime bounds, and what a document's
points' payloads say (status, versions, chunk layouts). No client library is imported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from freshrag.retrieve.contract import ChunkLayout, DocumentStatus, Hit, layout_of


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


LAYOUT_FIELDS = [
    "tenant",
    "doc_id",
    "version",
    "offset",
    "chunk_index",
    "chunk_count",
    "content_hash",
]


def layouts_from_payloads(
    payloads: Iterable[dict[str, Any]],
) -> dict[tuple[str, str], list[ChunkLayout]]:
    """(tenant, doc_id) -> each point's layout, from payloads holding LAYOUT_FIELDS."""
    out: dict[tuple[str, str], list[ChunkLayout]] = {}
    for p in payloads:
        out.setdefault((str(p["tenant"]), str(p["doc_id"])), []).append(layout_of(p))
    return out
