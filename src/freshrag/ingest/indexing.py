"""From gated change events to index writes: collapse, chunk, embed (pure given its ports).

Embedding is the cost, so it runs once per batch across documents; a failure falls back to
per-document embedding so one bad document is dead-lettered and the rest are written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from freshrag.ingest.chunking import Chunk, TokenCounter, chunk_document, embedding_text
from freshrag.ingest.events import ChangeEvent, DeadLetter, Delete, RawRecord, RecordOrigin, Upsert
from freshrag.retrieve.contract import ChunkPoint, SparseVector


class DenseEmbedder(TokenCounter, Protocol):
    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...


class SparseEmbedder(Protocol):
    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]: ...


# (tenant, doc_ids) -> {doc_id: highest indexed version}; the index is the source of truth.
VersionLookup = Callable[[str, Sequence[str]], Mapping[str, int]]


@dataclass(frozen=True, slots=True)
class WriteUpsert:
    event: Upsert
    points: list[ChunkPoint]
    # records this write supersedes (older versions in the same batch): final once it lands
    completes: tuple[RecordOrigin, ...] = ()


@dataclass(frozen=True, slots=True)
class WriteDelete:
    event: Delete
    completes: tuple[RecordOrigin, ...] = ()


IndexWrite = WriteUpsert | WriteDelete


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    max_tokens: int = 200
    overlap: int = 32
    max_chunks_per_document: int = 2_000


GateState = tuple[int, bool]  # (last applied version, was it a delete)


def version_gate(
    last: GateState | None, event: ChangeEvent
) -> tuple[GateState | None, ChangeEvent | None]:
    """Per-document state: drop events older than the last applied version.

    An upsert must be strictly newer. A delete may carry the same version as the upsert it
    removes (Debezium's `before` image does), so it wins ties unless that version is already
    deleted. Replays and reordering therefore never regress a document.
    """
    is_delete = isinstance(event, Delete)
    if last is not None:
        version, deleted = last
        newer = event.version > version
        same_version_delete = is_delete and event.version == version and not deleted
        if not (newer or same_version_delete):
            return last, None
    return (event.version, is_delete), event


def collapse(events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
    """Keep only the last event per document in a batch; the gate already put them in version
    order, so earlier ones would only be overwritten (a same-version delete included)."""
    last: dict[str, ChangeEvent] = {}
    for event in events:
        last.pop(event.doc_key, None)
        last[event.doc_key] = event
    return list(last.values())


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
        indexed_versions: VersionLookup | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.dense = dense
        self.sparse = sparse
        self.config = config
        self.indexed_versions = indexed_versions
        self.clock = clock

    def process(self, events: Sequence[ChangeEvent]) -> BatchResult:
        result = BatchResult([], [], [])
        newest = collapse(events)
        if len(newest) < len(events):
            kept = {id(e) for e in newest}
            result.superseded.extend(e for e in events if id(e) not in kept)
        batch = self._drop_already_indexed(newest, result)
        chunked: list[tuple[Upsert, list[Chunk]]] = []
        for event in batch:
            if isinstance(event, Delete):
                result.writes.append(WriteDelete(event))
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

    def _drop_already_indexed(
        self, events: list[ChangeEvent], result: BatchResult
    ) -> list[ChangeEvent]:
        """Skip upserts whose version the index already holds (replays after state loss)."""
        if self.indexed_versions is None:
            return events
        by_tenant: dict[str, list[str]] = {}
        for e in events:
            if isinstance(e, Upsert):
                by_tenant.setdefault(e.tenant, []).append(e.doc_id)
        indexed: dict[tuple[str, str], int] = {}
        for tenant, doc_ids in by_tenant.items():
            for doc_id, version in self.indexed_versions(tenant, doc_ids).items():
                indexed[(tenant, doc_id)] = version
        kept = []
        for e in events:
            have = indexed.get((e.tenant, e.doc_id))
            if isinstance(e, Upsert) and have is not None and have >= e.version:
                result.skipped.append(e)
            else:
                kept.append(e)
        return kept

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
                    )
                )
                pos += 1
            writes.append(WriteUpsert(event, points))
        return writes
