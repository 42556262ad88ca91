"""From gated change events to index writes: collapse, chunk, embed (pure given its ports).

Embedding is the cost, so it runs once per batch across documents; a failure falls back to
per-document embedding so one bad document is dead-lettered and the rest are written. And it is
paid only for what changed: a new version whose title and text are those already indexed is a
payload patch (no chunking, no embedding), and the chunks of an edited document whose exact
embedded text is already in the index (same hash, same model and chunking) reuse its vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from freshrag.core.embed_errors import BackendUnavailableError
from freshrag.ingest.chunking import Chunk, TokenCounter, chunk_document, embedding_text
from freshrag.ingest.events import ChangeEvent, DeadLetter, Delete, RawRecord, Upsert
from freshrag.retrieve.contract import (
    ChunkLayout,
    ChunkPoint,
    SparseVector,
    StoredVectors,
    acl_payload,
    text_hash,
)


class DenseEmbedder(TokenCounter, Protocol):
    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...


class SparseEmbedder(Protocol):
    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]: ...


# (tenant or None for every tenant, doc_ids) -> {(tenant, doc_id): layout of each point}.
# The index is the source of truth for what a replay still has to write.
LayoutLookup = Callable[
    [str | None, Sequence[str]], Mapping[tuple[str, str], Sequence[ChunkLayout]]
]
# (tenant, doc_ids) -> {chunk_hash: vectors} of those documents' points (reuse on an edit).
VectorLookup = Callable[[str, Sequence[str]], Mapping[str, StoredVectors]]


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


@dataclass(frozen=True, slots=True)
class WritePatch:
    """A new version with the title and text already indexed (only metadata, url, acl or
    updated_at differ): set `payload` on the document's points in place, then clean up like
    an upsert of `keep_chunks` chunks. Nothing is embedded."""

    event: Upsert
    payload: dict[str, Any]
    keep_chunks: int


IndexWrite = WriteUpsert | WriteDelete | WritePatch


def patch_payload(event: Upsert, indexed_at: datetime) -> dict[str, Any]:
    """The payload fields an upsert sets that do not depend on its text."""
    return {
        "version": event.version,
        "updated_at": event.updated_at.isoformat(),
        "indexed_at": indexed_at.isoformat(),
        "url": event.url,
        "source": event.source,
        "metadata": dict(event.metadata),
        "acl": acl_payload(getattr(event, "acl", None)),
        "topic": event.origin.topic,
        "partition": event.origin.partition,
        "offset": event.origin.offset,
    }


def patchable_chunk_count(
    points: Sequence[ChunkLayout], event: Upsert, content_hash: str
) -> int | None:
    """n when the index holds exactly chunks 0..n-1 (one chunk_count n) of this document, all
    with `content_hash` and none newer than the event: a payload patch then makes it the
    event's version. Versions may be mixed (a patch cut short by a crash converges)."""
    if not points or not content_hash:
        return None
    if any(p.content_hash != content_hash or p.version > event.version for p in points):
        return None
    count = points[0].chunk_count
    if any(p.chunk_count != count for p in points):
        return None
    if sorted(p.chunk_index for p in points) != list(range(count)):
        return None
    return count


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
    chunks_reused: int = 0  # chunks whose vectors came from the index (unchanged text)
    patched: int = 0  # documents updated by a payload patch


class DocumentIndexer:
    """Turns a batch of gated events into index writes, embedding all chunks together."""

    def __init__(
        self,
        dense: DenseEmbedder,
        sparse: SparseEmbedder,
        config: ChunkingConfig,
        layouts: LayoutLookup | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        vectors: VectorLookup | None = None,
        fingerprint: str = "",
    ) -> None:
        """`fingerprint`: the index generation's build settings (model, chunking); it is part
        of every chunk and content hash, so vectors are only reused within one build."""
        self.dense = dense
        self.sparse = sparse
        self.config = config
        self.layouts = layouts
        self.clock = clock
        self.vectors = vectors
        self.fingerprint = fingerprint

    def content_hash(self, event: Upsert) -> str:
        """What decides the chunks and their vectors: the title and the text. The build needs
        no part in it: a generation holds one build only (other writers are refused), and a
        re-index that re-embeds stored chunks can carry it over without the document's text."""
        return text_hash(event.title, event.text)

    def chunk_hash(self, text: str) -> str:
        return text_hash(self.fingerprint, text)

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
            if isinstance(event, WriteUpsert | WritePatch):  # nothing to embed
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
    ) -> list[ChangeEvent | WriteUpsert | WritePatch]:
        """Skip the embedding of upserts the index already holds completely (replays).

        Complete means chunks 0..n-1 of one chunk_count n at the event's version (and, for a
        version-less event, from the same record). Anything less is rewritten; a complete one
        still gets its cleanup, so a crash between the last chunk and the cleanup converges.
        A newer version in the index means the event is stale: its own replay fixes that one.
        A repair's replay is rewritten in full (it exists because the index is wrong), after a
        delete when the index holds a version newer than the source's.
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
        planned: list[ChangeEvent | WriteUpsert | WritePatch] = []
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
            if e.replay:  # a repair: the gate vouched for it, whatever the index holds
                if any(p.version > e.version for p in points):  # an index ahead of its source
                    planned.append(Delete(e.tenant, e.doc_id, None, e.origin))
                planned.append(e)
                continue
            if any(p.version > e.version for p in points):
                result.skipped.append(e)
                continue
            complete = complete_chunk_count(points, e)
            patch = (
                None
                if complete is not None
                else patchable_chunk_count(points, e, self.content_hash(e))
            )
            if patch is not None:
                result.patched += 1
                planned.append(WritePatch(e, patch_payload(e, self.clock()), patch))
            elif complete is None:
                planned.append(e)
            else:
                result.skipped.append(e)
                planned.append(WriteUpsert(e, [], keep_chunks=complete))
        return planned

    def _known_vectors(self, chunked: list[tuple[Upsert, list[Chunk]]]) -> dict[str, Any]:
        """Vectors the index holds for these documents' chunks, by chunk hash ({} when the
        lookup is off or fails: then everything is embedded, which is always correct)."""
        if self.vectors is None:
            return {}
        by_tenant: dict[str, list[str]] = {}
        for event, _ in chunked:
            by_tenant.setdefault(event.tenant, []).append(event.doc_id)
        known: dict[str, Any] = {}
        try:
            for tenant, doc_ids in by_tenant.items():
                known.update(self.vectors(tenant, doc_ids))
        except Exception:  # an optimisation: never the reason a document is not indexed
            return {}
        return known

    def _embed(
        self, chunked: list[tuple[Upsert, list[Chunk]]], result: BatchResult
    ) -> list[IndexWrite]:
        if not chunked:
            return []
        texts = [embedding_text(c) for _, chunks in chunked for c in chunks]
        hashes = [self.chunk_hash(t) for t in texts]
        known = self._known_vectors(chunked)
        todo: dict[str, str] = {}  # hash -> text, each distinct new text embedded once
        for h, t in zip(hashes, texts, strict=True):
            if h not in known:
                todo.setdefault(h, t)
        new_texts = list(todo.values())
        try:
            dense_new = self.dense.embed_documents(new_texts) if new_texts else []
            sparse_new = self.sparse.embed_documents(new_texts) if new_texts else []
        except BackendUnavailableError:
            raise  # the model is down (remote endpoint), not the documents: fail loudly
        except Exception:
            if len(chunked) == 1:
                event = chunked[0][0]
                try:
                    dense_new = self.dense.embed_documents(new_texts)
                    sparse_new = self.sparse.embed_documents(new_texts)
                except BackendUnavailableError:
                    raise
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
        vectors = dict(known)
        for h, d, sp in zip(todo, dense_new, sparse_new, strict=True):
            vectors[h] = (d, sp)
        result.chunks_embedded += len(new_texts)
        result.chunks_reused += sum(1 for h in hashes if h in known)
        now = self.clock()
        writes: list[IndexWrite] = []
        pos = 0
        for event, chunks in chunked:
            points = []
            content = self.content_hash(event)
            for chunk in chunks:
                dense, sparse = vectors[hashes[pos]]
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
                        dense=dense,
                        sparse=sparse,
                        topic=event.origin.topic,
                        partition=event.origin.partition,
                        offset=event.origin.offset,
                        acl=event.acl,
                        chunk_hash=hashes[pos],
                        content_hash=content,
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
