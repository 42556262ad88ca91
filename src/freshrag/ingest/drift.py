"""What `freshrag verify` finds: the index compared with the source topic (pure).

The source side is the winning event of every (tenant, document): the log's events run, in log
order, through the very version gate the flow uses (`ordering.gate`, nothing forgotten), and the
last event the gate lets through for a (tenant, document) is what the index must reflect. The
index side is the layout of every point (`ChunkLayout`: version, source offset, chunk index and
count). A document is

- missing: the source's winner is an upsert and the index holds no point of it;
- stale: the index holds it, but not exactly chunks 0..n-1 of one chunk count n at the winner's
  version, written by one record (an older or newer version, several versions, a chunk missing,
  or chunks of two writes mixed);
- deleted: the index holds it, but the source's winner is a delete, or the source holds no
  event of it at all (compaction removed the tombstone);
- in flight, not drift: a live ingest may still be on it (the winner is at or past the indexed
  watermark of its partition, the index holds a point written from past the end of what was
  read, or a record of it arrived while verify ran).

`repair_events` turns the drift into the replay events that make the running ingest fix it
through its normal path, without undoing a write that lands meanwhile (see its doc).

No Kafka or Qdrant client is imported here; `verify` is the thin adapter that reads both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from freshrag.ingest.events import ChangeEvent, Delete, Upsert, delete_event, native_event
from freshrag.ingest.ordering import Applied, gate
from freshrag.retrieve.contract import ChunkLayout, layout_of

DocKey = tuple[str, str]  # (tenant, doc_id)
Category = Literal["missing", "stale", "deleted"]
CATEGORIES: tuple[Category, ...] = ("missing", "stale", "deleted")


@dataclass(frozen=True, slots=True)
class IndexedChunk:
    """What verify needs of one point: its layout and the partition its record came from."""

    layout: ChunkLayout
    partition: int = -1
    topic: str = ""


def indexed_from_payloads(
    payloads: Iterable[Mapping[str, Any]],
) -> dict[DocKey, list[IndexedChunk]]:
    """(tenant, doc_id) -> its points, from point payloads (the contract's fields)."""
    out: dict[DocKey, list[IndexedChunk]] = {}
    for p in payloads:
        partition = p.get("partition")
        chunk = IndexedChunk(
            layout_of(p),
            int(partition) if partition is not None else -1,
            str(p.get("topic") or ""),
        )
        out.setdefault((str(p["tenant"]), str(p["doc_id"])), []).append(chunk)
    return out


def winning_events(events: Iterable[ChangeEvent]) -> dict[DocKey, ChangeEvent]:
    """The last event the version gate applies per (tenant, doc_id), events in log order.

    A delete whose tenant nobody knows yet goes to the tenant it names (the default), as the
    indexer resolves it. Nothing is forgotten (the flow forgets deletes after a retention)."""
    state: dict[str, dict[str, Applied] | None] = {}
    winners: dict[DocKey, ChangeEvent] = {}
    for event in events:
        new, out = gate(state.get(event.doc_id), event, 0)
        state[event.doc_id] = new
        for applied in out:
            winners[(applied.tenant, applied.doc_id)] = applied
    return winners


@dataclass(frozen=True, slots=True)
class Drift:
    category: Category
    tenant: str
    doc_id: str
    reason: str
    source: ChangeEvent | None  # the winning event (None: the source holds nothing of it)
    indexed_versions: tuple[int, ...] = ()
    indexed_partition: int = -1  # the partition the index says its points came from (-1: unknown)

    def as_dict(self) -> dict[str, Any]:
        src = self.source
        return {
            "category": self.category,
            "tenant": self.tenant,
            "doc_id": self.doc_id,
            "reason": self.reason,
            "source_op": None if src is None else "delete" if isinstance(src, Delete) else "upsert",
            "source_version": None if src is None else src.version,
            "source_partition": None if src is None else src.origin.partition,
            "source_offset": None if src is None else src.origin.offset,
            "indexed_versions": list(self.indexed_versions),
        }


@dataclass(frozen=True, slots=True)
class InFlight:
    tenant: str
    doc_id: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "doc_id": self.doc_id, "reason": self.reason}


@dataclass
class DriftReport:
    source_documents: int = 0  # live documents at the source (winner: an upsert)
    index_documents: int = 0
    checked: int = 0  # documents compared (either side), in-flight ones included
    drift: list[Drift] = field(default_factory=list)
    in_flight: list[InFlight] = field(default_factory=list)
    bad_records: int = 0  # source records parse_record refused (skipped)
    records: int = 0  # source records read
    watermarks_known: bool = True

    @property
    def clean(self) -> bool:
        return not self.drift

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {c: 0 for c in CATEGORIES}
        for d in self.drift:
            out[d.category] += 1
        return out

    def examples(self, category: Category, limit: int = 5) -> list[Drift]:
        return [d for d in self.drift if d.category == category][:limit]

    def as_dict(self, examples: int = 20) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "records": self.records,
            "bad_records": self.bad_records,
            "source_documents": self.source_documents,
            "index_documents": self.index_documents,
            "checked": self.checked,
            "counts": {**self.counts(), "in_flight": len(self.in_flight)},
            "watermarks_known": self.watermarks_known,
            "examples": {c: [d.as_dict() for d in self.examples(c, examples)] for c in CATEGORIES},
            "in_flight": [f.as_dict() for f in self.in_flight[:examples]],
        }


def layout_problem(chunks: Sequence[ChunkLayout], version: int) -> str | None:
    """Why `chunks` are not one complete write of `version` (None when they are)."""
    versions = sorted({c.version for c in chunks})
    if versions != [version]:
        if len(versions) > 1:
            return f"chunks of several versions {versions}, source version {version}"
        older = "older" if versions[0] < version else "newer"
        return f"index holds {older} version {versions[0]}, source version {version}"
    counts = sorted({c.chunk_count for c in chunks})
    if len(counts) > 1:
        return f"chunks of several writes (chunk counts {counts})"
    offsets = sorted({c.offset for c in chunks})
    if len(offsets) > 1:
        return f"chunks of several writes (source offsets {offsets[:4]})"
    n = counts[0]
    indexes = sorted(c.chunk_index for c in chunks)
    if indexes != list(range(n)):
        lacking = sorted(set(range(n)) - set(indexes))
        extra = sorted(i for i in set(indexes) if not 0 <= i < n)
        if lacking:
            return f"incomplete: {len(indexes)} of {n} chunks, lacking {lacking[:8]}"
        return f"chunk indexes out of 0..{n - 1}: {extra[:8] or indexes[:8]}"
    return None


def compare(
    winners: Mapping[DocKey, ChangeEvent],
    indexed: Mapping[DocKey, Sequence[IndexedChunk]],
    *,
    topic: str = "",
    watermarks: Mapping[int, int] | None = None,
    ends: Mapping[int, int] | None = None,
    touched: Iterable[tuple[str | None, str]] = (),
    tenant: str | None = None,
) -> DriftReport:
    """Compare the source's winners with the index (see the module doc).

    `watermarks`: the indexed watermark per partition (None: unknown, nothing is in flight by
    it); `ends`: the end offset per partition of what was read (points written from records at
    or past it are in flight); `touched`: (tenant or None for every tenant, doc_id) of records
    that arrived while verify ran; `tenant`: compare that tenant only."""
    report = DriftReport(watermarks_known=watermarks is not None)
    touched_any = {doc for t, doc in touched if t is None}
    touched_keys = {(t, doc) for t, doc in touched if t is not None}
    keys = set(winners) | set(indexed)
    if tenant is not None:
        keys = {k for k in keys if k[0] == tenant}
    for key in sorted(keys):
        win = winners.get(key)
        points = list(indexed.get(key, ()))
        report.checked += 1
        if isinstance(win, Upsert):
            report.source_documents += 1
        if points:
            report.index_documents += 1
        flight = _in_flight(key, win, points, topic, watermarks, ends, touched_keys, touched_any)
        if flight is not None:
            if not _settled(win, points):
                report.in_flight.append(InFlight(key[0], key[1], flight))
            continue
        versions = tuple(sorted({p.layout.version for p in points}))
        if isinstance(win, Upsert):
            if not points:
                report.drift.append(
                    Drift("missing", *key, f"source version {win.version} not indexed", win)
                )
                continue
            problem = layout_problem([p.layout for p in points], win.version)
            if problem is not None:
                report.drift.append(Drift("stale", *key, problem, win, versions))
        elif points:
            reason = (
                "deleted at the source"
                if win is not None
                else "no event at the source (deleted and compacted away, or never there)"
            )
            partition = max((p.partition for p in points), default=-1)
            report.drift.append(Drift("deleted", *key, reason, win, versions, partition))
    return report


def _settled(win: ChangeEvent | None, points: Sequence[IndexedChunk]) -> bool:
    """Already consistent: nothing to report, in flight or not."""
    if isinstance(win, Upsert):
        return bool(points) and layout_problem([p.layout for p in points], win.version) is None
    return not points


def _in_flight(
    key: DocKey,
    win: ChangeEvent | None,
    points: Sequence[IndexedChunk],
    topic: str,
    watermarks: Mapping[int, int] | None,
    ends: Mapping[int, int] | None,
    touched_keys: set[DocKey],
    touched_any: set[str],
) -> str | None:
    if key in touched_keys or key[1] in touched_any:
        return "a record of it arrived while verify ran"
    if win is not None and watermarks is not None:
        mark = watermarks.get(win.origin.partition, 0)
        if win.origin.offset >= mark:
            return (
                f"source offset {win.origin.partition}:{win.origin.offset} is not indexed yet "
                f"(watermark {mark})"
            )
    if ends is not None:
        for p in points:
            same_topic = not p.topic or not topic or p.topic == topic
            end = ends.get(p.partition)
            if same_topic and end is not None and p.layout.offset >= end:
                return f"indexed from offset {p.partition}:{p.layout.offset}, past the read end"
    return None


def repair_events(drift: Iterable[Drift]) -> list[dict[str, Any]]:
    """Replay events (`"replay": true`) that make the running ingest fix `drift` through its
    normal path, one per document.

    missing/stale: the winning event again, naming the record it replays. The gate applies it at
    the version it already applied (a bare re-sent record of that version would be a duplicate
    to it), so the document is rewritten in full, but only while that record is still the last
    one applied: not once a newer version, a delete or another record of the version has been.
    deleted: a replayed delete of the points up to the highest version the index holds (or the
    source's delete names), which the gate applies only while the document is deleted or unknown
    to it: a re-create that lands meanwhile stays. (`ordering.is_after` has the rules.)"""
    out: list[dict[str, Any]] = []
    for d in drift:
        if d.category != "deleted" and isinstance(d.source, Upsert):
            # a replay of a replay names the record the first one stood for
            of = d.source.replay_of if d.source.replay else d.source.origin.offset
            out.append(native_event(replace(d.source, replay=True, replay_of=of)))
            continue
        versions = list(d.indexed_versions)
        if isinstance(d.source, Delete) and d.source.version is not None:
            versions.append(d.source.version)
        bar = max(versions, default=0)
        out.append({**delete_event(d.doc_id, tenant=d.tenant, version=bar), "replay": True})
    return out
