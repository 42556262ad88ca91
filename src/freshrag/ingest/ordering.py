"""The order of change events, defined in one place, and the per-document version gate (pure).

Order: an event's version is its explicit `version` field, or the Kafka record timestamp (ms)
when it has none; a higher version is newer. Equal versions are told apart by the partition
offset (a document's events share one partition, since they share a key), except between two
events with explicit versions, where the version says it all: a later delete beats an upsert of
the same version (Debezium's `before` image carries the row's version), and anything else equal
is a replay. An event is applied only if it is newer than the last applied event of its document, so
replays and reordering never regress a document, and two version-less upserts in the same
millisecond keep the later one.

A delete without a version (a tombstone, a version-less DELETE) removes whatever is indexed
and does not raise the version bar: it takes the last applied version with its own offset, so a
later re-create with a small explicit version still wins (`v3`, delete, `v4` -> `v4` indexed).

State is kept per source key (the document id), with one entry per tenant, so a delete whose
tenant the source cannot say (a tombstone keyed by a bare primary key, a Debezium `before`
image holding only the key) reaches the tenant the document was indexed under, and a row that
moves to another tenant leaves the old one. Entries of deleted documents are forgotten after a
retention period (like Kafka's `delete.retention.ms`), which bounds the state by live documents.

A repair's replay (`replay` on the event, written by `freshrag verify --repair`) re-applies the
source's winner without ever undoing a write that came after it. A replayed upsert names the
record it replays (`replay_of`, an offset of the same partition); it is dropped once a record
after that one has been applied (even an older version: a compacted log can lose the replayed
record but keep a delete after it), at an equal version it is applied only while that record is
still the last one applied, and it is then remembered as that record, so a second repair of the
same winner is applied too. A replayed
delete (of points up to its version) is applied only while the document is deleted or unknown
here, and leaves the version bar where it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import NamedTuple

from freshrag.ingest.events import ChangeEvent, Delete, Upsert


class Applied(NamedTuple):
    """The last event applied to one (tenant, document): a tuple, to keep the state small."""

    version: int
    offset: int
    deleted: bool
    at_ms: int  # when it was applied (wall clock), for forgetting deletes
    explicit: bool = True  # its version came from the event, not from the record timestamp
    row: bool = False  # written by a database row (Debezium): its id names it across tenants


# tenant -> last applied event, for one source key (document id)
DocState = Mapping[str, Applied]


def effective_version(event: ChangeEvent, last: Applied | None = None) -> int:
    """A version-less delete takes the last applied version (0 when none is known)."""
    if isinstance(event, Delete) and event.version is None:
        return last.version if last is not None else 0
    assert event.version is not None
    return event.version


def is_explicit(event: ChangeEvent) -> bool:
    if isinstance(event, Delete):
        return event.version is not None
    return event.explicit_version


def is_after(event: ChangeEvent, last: Applied | None) -> bool:
    """Is `event` newer than the last applied event of its document (see the module doc)?"""
    if last is None:
        return True
    version = effective_version(event, last)
    later = event.origin.offset > last.offset
    if event.replay and isinstance(event, Delete):
        return later and last.deleted
    if isinstance(event, Upsert) and event.replay and last.offset > event.replay_of:
        return False  # a record after the replayed one was applied: the replay is outdated
    if version != last.version:
        return version > last.version
    if isinstance(event, Upsert) and event.replay:
        return later and not last.deleted and last.offset == event.replay_of
    if is_explicit(event) and last.explicit:
        return later and isinstance(event, Delete) and not last.deleted
    return later


def prune(state: DocState | None, now_ms: int, retention_ms: int) -> dict[str, Applied] | None:
    """Drop delete entries older than the retention; None when nothing is left."""
    if not state:
        return None
    kept = {t: a for t, a in state.items() if not (a.deleted and now_ms - a.at_ms > retention_ms)}
    return kept or None


def next_expiry_ms(state: DocState | None, retention_ms: int) -> int | None:
    """When the oldest remembered delete may be forgotten (None: nothing to forget)."""
    if not state:
        return None
    due = [a.at_ms + retention_ms for a in state.values() if a.deleted]
    return min(due) if due else None


def gate(
    state: DocState | None, event: ChangeEvent, now_ms: int
) -> tuple[dict[str, Applied] | None, list[ChangeEvent]]:
    """Apply one event to its document's state; return the new state and what to index.

    The output is empty for a stale event. A row that moves tenant yields a delete of the old
    tenant's copy before the upsert. A delete of an unknown tenant yields one delete per tenant
    holding the id as a row (else the named default tenant, as before), or passes through
    unresolved when the id is unknown here (the indexer then asks the index).
    """
    current = dict(state or {})
    out: list[ChangeEvent] = []
    if isinstance(event, Delete) and not event.tenant_known:
        if not current:
            return None, [event]
        rows = sorted(t for t, a in current.items() if a.row)
        live_rows = [t for t in rows if not current[t].deleted]
        # never held as a row: the tenant it names (the default), as a native tombstone means
        for tenant in live_rows if rows else [event.tenant]:
            resolved = replace(event, tenant=tenant, tenant_known=True)
            last = current.get(tenant)
            if is_after(resolved, last):
                current[tenant] = _applied(resolved, last, now_ms)
                out.append(resolved)
        return current, out
    last = current.get(event.tenant)
    if not is_after(event, last):
        return current or None, []
    if event.row_identity and any(
        a.row and t != event.tenant and not is_after(event, a) for t, a in current.items()
    ):
        return current, []  # an older image of a row that has since moved tenant
    if isinstance(event, Upsert) and event.row_identity:
        for tenant, applied in sorted(current.items()):
            if tenant != event.tenant and applied.row and not applied.deleted:
                moved = Delete(tenant, event.doc_id, None, event.origin, row_identity=True)
                current[tenant] = _applied(moved, applied, now_ms)
                out.append(moved)
    current[event.tenant] = _applied(event, last, now_ms)
    out.append(event)
    return current, out


def _applied(event: ChangeEvent, last: Applied | None, now_ms: int) -> Applied:
    if isinstance(event, Delete) and event.replay:  # removes stale points; moves no bar
        if last is None:
            return Applied(0, event.origin.offset, True, now_ms, False, False)
        return last._replace(offset=event.origin.offset, deleted=True, at_ms=now_ms)
    if isinstance(event, Upsert) and event.replay:  # it stands for the record it replays
        row = last is not None and last.row  # written as a native event, still the same row
        explicit = last.explicit if last is not None else True
        return Applied(event.version, event.replay_of, False, now_ms, explicit, row)
    return Applied(
        effective_version(event, last),
        event.origin.offset,
        isinstance(event, Delete),
        now_ms,
        is_explicit(event),
        event.row_identity,
    )
