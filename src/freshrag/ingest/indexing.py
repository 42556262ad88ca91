"""From gated change events to index writes: collapse, chunk, embed (pure given its ports).

Embedding is the cost, so it runs once per batch across documents; a failure falls back to
per-document embedding so one bad document is dead-lettered and the rest are written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from freshrag.ingest.chunking import Chunk, TokenCounter, chunk_document, embedding_text
from freshrag.ingest.events import ChangeEvent, DeadLetter, Delete, RawRecord, Upsert
from freshrag.retrieve.contract import ChunkLayout, ChunkPoint, SparseVector


class DenseEmbedder(TokenCounter, Protocol):
    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...


class SparseEmbedder(Protocol):
    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]: ...


# (tenant or None for every tenant, doc_ids) -> {(tenant, doc_id): layout of each point}.
# The index is the source of truth for what a replay still has to write.
LayoutLookup = Callable[
    [str | None, Sequence[str]], Mapping[tuple[str, str], Sequence[ChunkLayout]]
]


@dataclass(frozen=True, slots=True)
class WriteUpsert:
    """Write `points` (all chunks 0..keep_chunks-1 of the version), then delete the rest of
    the document. `points=[]` is a cleanup-only write: the index already holds every chunk."""

    event: Upsert
    points: list[ChunkPoint]
    keep_chunks: int = 0


@dataclass(frozen=True, slots=True)
class WriteDelete:
    event: Delete


IndexWrite = WriteUpsert | WriteDelete


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    max_tokens: int = 200
    overlap: int = 32
    max_chunks_per_document: int = 2_000


def collapse(events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
    """Keep the last event per document in a batch (the gate already put them in order, so
    earlier ones would only be overwritten), and when that is an upsert, also the last delete
    before it: should the upsert be dead-lettered, the delete must still have happened."""
    last: dict[str, ChangeEvent] = {}
    deletes: dict[str, Delete] = {}
    for event in events:
        if isinstance(event, Delete):
            deletes[event.doc_key] = event
        last.pop(event.doc_key, None)
        last[event.doc_key] = event
    out: list[ChangeEvent] = []
    for key, event in last.items():
        if isinstance(event, Upsert) and key in deletes:
            out.append(deletes[key])
        out.append(event)
    return out


def dead_letter_for(event: Upsert, error_class: str, message: str, step: str) -> DeadLetter:
    raw = event.raw or RawRecord(event.doc_id.encode(), None, event.origin)
    return DeadLetter(raw.key, raw.value, raw.origin, error_class, message, step)


@dataclass
class BatchResult:
    writes: list[IndexWrite]
    dead_letters: list[DeadLetter]
    skipped: list[ChangeEvent]
    superseded: list[ChangeEvent] = field(default_factory=list)
    chunks_embedded: int = 0
    embed_seconds: float = 0.0


class DocumentIndexer:
    """Turns a batch of gated events into index writes, embedding all chunks together."""

    def __init__(
        self,
        dense: DenseEmbedder,
        sparse: SparseEmbedder,
        config: ChunkingConfig,
        layouts: LayoutLookup | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.dense = dense
        self.sparse = sparse
        self.config = config
        self.layouts = layouts
        self.clock = clock

    def process(self, events: Sequence[ChangeEvent]) -> BatchResult:
        result = BatchResult([], [], [])
        resolved = self._resolve_tenants(events, result)
        newest = collapse(resolved)
        if len(newest) < len(resolved):
            kept = {id(e) for e in newest}
            result.superseded.extend(e for e in resolved if id(e) not in kept)
        batch = self._plan_against_index(newest, result)
        chunked: list[tuple[Upsert, list[Chunk]]] = []
        for event in batch:
            if isinstance(event, Delete):
                result.writes.append(WriteDelete(event))
                continue
            if isinstance(event, WriteUpsert):  # cleanup-only: the chunks are all there
                result.writes.append(event)
                continue
            try:
                chunks = chunk_document(
                    event.text, event.title, self.dense, self.config.max_tokens, self.config.overlap
                )
            except Exception as exc:  # a chunker bug on one input must not stop the flow
                result.dead_letters.append(
                    dead_letter_for(event, type(exc).__name__, str(exc), "chunk")
                )
                continue
            if len(chunks) > self.config.max_chunks_per_document:
                result.dead_letters.append(
                    dead_letter_for(
                        event,
                        "DocumentTooLarge",
                        f"document has {len(chunks)} chunks, over the limit of "
                        f"{self.config.max_chunks_per_document}",
                        "chunk",
                    )
                )
                continue
            chunked.append((event, chunks))
        started = time.perf_counter()
        result.writes.extend(self._embed(chunked, result))
        result.embed_seconds = time.perf_counter() - started
        return result

    def _resolve_tenants(
        self, events: Sequence[ChangeEvent], result: BatchResult
    ) -> list[ChangeEvent]:
        """A delete whose tenant the flow state did not know (its id was never seen here)
        goes to the tenant it names, the default one, as a bare-key tombstone always did."""
        return [
            replace(e, tenant_known=True) if isinstance(e, Delete) and not e.tenant_known else e
            for e in events
        ]

    def _plan_against_index(
        self, events: list[ChangeEvent], result: BatchResult
    ) -> list[ChangeEvent | WriteUpsert]:
        """Skip the embedding of upserts the index already holds completely (replays).

        Complete means chunks 0..n-1 of one chunk_count n at the event's version (and, for a
        version-less event, from the same record). Anything less is rewritten; a complete one
        still gets its cleanup, so a crash between the last chunk and the cleanup converges.
        A newer version in the index means the event is stale: its own replay fixes that one.
        """
        if self.layouts is None:
            return list(events)
        by_tenant: dict[str, list[str]] = {}
        for e in events:
            if isinstance(e, Upsert):
                by_tenant.setdefault(e.tenant, []).append(e.doc_id)
        indexed: dict[tuple[str, str], Sequence[ChunkLayout]] = {}
        for tenant, doc_ids in by_tenant.items():
            indexed.update(self.layouts(tenant, doc_ids))
        planned: list[ChangeEvent | WriteUpsert] = []
        deleted_here: set[str] = set()
        for e in events:
            if not isinstance(e, Upsert):
                deleted_here.add(e.doc_key)
                planned.append(e)
                continue
            if e.doc_key in deleted_here:  # the delete before it runs first: rewrite it all
                planned.append(e)
                continue
            points = indexed.get((e.tenant, e.doc_id), ())
            if any(p.version > e.version for p in points):
                result.skipped.append(e)
                continue
            complete = complete_chunk_count(points, e)
            if complete is None:
                planned.append(e)
            else:
                result.skipped.append(e)
                planned.append(WriteUpsert(e, [], keep_chunks=complete))
        return planned

    def _embed(
        self, chunked: list[tuple[Upsert, list[Chunk]]], result: BatchResult
    ) -> list[IndexWrite]:
        if not chunked:
            return []
        texts = [embedding_text(c) for _, chunks in chunked for c in chunks]
        try:
            dense = self.dense.embed_documents(texts)
            sparse = self.sparse.embed_documents(texts)  # title + headings help BM25 (+0.02)
        except Exception:
            if len(chunked) == 1:
                event = chunked[0][0]
                try:
                    dense = self.dense.embed_documents(texts)
                    sparse = self.sparse.embed_documents(texts)
                except Exception as exc:
                    result.dead_letters.append(
                        dead_letter_for(
                            event, "EmbeddingError", f"{type(exc).__name__}: {exc}", "embed"
                        )
                    )
                    return []
            else:  # isolate the failing document(s)
                isolated: list[IndexWrite] = []
                for item in chunked:
                    isolated.extend(self._embed([item], result))
                return isolated
        result.chunks_embedded += len(texts)
        now = self.clock()
        writes: list[IndexWrite] = []
        pos = 0
        for event, chunks in chunked:
            points = []
            for chunk in chunks:
                points.append(
                    ChunkPoint(
                        tenant=event.tenant,
                        doc_id=event.doc_id,
                        version=event.version,
                        chunk_index=chunk.index,
                        chunk_count=len(chunks),
                        text=chunk.text,
                        title=event.title,
                        heading=chunk.heading_path,
                        url=event.url,
                        source=event.source,
                        updated_at=event.updated_at,
                        indexed_at=now,
                        metadata=event.metadata,
                        dense=dense[pos],
                        sparse=sparse[pos],
                        topic=event.origin.topic,
                        partition=event.origin.partition,
                        offset=event.origin.offset,
                    )
                )
                pos += 1
            writes.append(WriteUpsert(event, points, keep_chunks=len(points)))
        return writes


def complete_chunk_count(points: Sequence[ChunkLayout], event: Upsert) -> int | None:
    """n when the index holds exactly chunks 0..n-1 (one chunk_count n) written by `event`'s
    very record, else None. A different record of the same version can only get past the gate
    after a delete (a re-create), and must be written."""
    mine = [
        p
        for p in points
        if p.version == event.version
        # the same record; points written before offsets were stored: the same explicit version
        and (p.offset == event.origin.offset or (p.offset < 0 and event.explicit_version))
    ]
    if not mine:
        return None
    count = mine[0].chunk_count
    if any(p.chunk_count != count for p in mine):
        return None
    if sorted(p.chunk_index for p in mine) != list(range(count)):
        return None
    return count
