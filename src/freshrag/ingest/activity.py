"""A bounded log of recent index writes, for the web page's live panel (pure, thread-safe)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from freshrag.core.principals import EVERYONE
from freshrag.ingest.indexing import IndexWrite, WritePatch, WriteUpsert


@dataclass(frozen=True, slots=True)
class Activity:
    tenant: str
    doc_id: str
    op: str
    version: int
    title: str
    chunk_count: int
    indexed_at: str
    acl: tuple[str, ...] | None = None  # the upsert's principals (None: the whole tenant)


class RecentWrites:
    def __init__(self, capacity: int = 200) -> None:
        self._items: deque[Activity] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, writes: list[IndexWrite]) -> None:
        now = datetime.now(UTC).isoformat()
        with self._lock:
            for w in writes:
                e = w.event
                upsert = isinstance(w, WriteUpsert | WritePatch)
                self._items.append(
                    Activity(
                        tenant=e.tenant,
                        doc_id=e.doc_id,
                        op="upsert" if upsert else "delete",
                        version=e.version if e.version is not None else -1,
                        title=w.event.title if isinstance(w, WriteUpsert | WritePatch) else "",
                        chunk_count=w.keep_chunks if isinstance(w, WriteUpsert | WritePatch) else 0,
                        indexed_at=now,
                        acl=w.event.acl if isinstance(w, WriteUpsert | WritePatch) else None,
                    )
                )

    def latest(
        self, tenant: str, limit: int = 20, principals: Sequence[str] | None = None
    ) -> list[Activity]:
        """Newest first, only the given tenant's documents; with `principals`, only upserts
        whose `acl` names one of them (EVERYONE implied) or that have none (a delete does not
        say who could read the document, so it is left out)."""
        readable = None if principals is None else {EVERYONE, *principals}
        with self._lock:
            items = [
                a
                for a in reversed(self._items)
                if a.tenant == tenant
                and (
                    readable is None
                    or (a.op == "upsert" and (a.acl is None or not readable.isdisjoint(a.acl)))
                )
            ]
        return items[:limit]
