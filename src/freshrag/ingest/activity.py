"""A bounded log of recent index writes, for the web page's live panel (pure, thread-safe)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from freshrag.ingest.indexing import IndexWrite, WriteUpsert


@dataclass(frozen=True, slots=True)
class Activity:
    tenant: str
    doc_id: str
    op: str
    version: int
    title: str
    chunk_count: int
    indexed_at: str


class RecentWrites:
    def __init__(self, capacity: int = 200) -> None:
        self._items: deque[Activity] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, writes: list[IndexWrite]) -> None:
        now = datetime.now(UTC).isoformat()
        with self._lock:
            for w in writes:
                e = w.event
                upsert = isinstance(w, WriteUpsert)
                self._items.append(
                    Activity(
                        tenant=e.tenant,
                        doc_id=e.doc_id,
                        op="upsert" if upsert else "delete",
                        version=e.version if e.version is not None else -1,
                        title=w.event.title if isinstance(w, WriteUpsert) else "",
                        chunk_count=w.keep_chunks if isinstance(w, WriteUpsert) else 0,
                        indexed_at=now,
                    )
                )

    def latest(self, tenant: str, limit: int = 20) -> list[Activity]:
        """Newest first, only the given tenant's documents."""
        with self._lock:
            items = [a for a in reversed(self._items) if a.tenant == tenant]
        return items[:limit]
