"""Batch collapse and the batch indexer (fakes for the embedder ports); the gate is in
test_ordering."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from freshrag.ingest.events import Delete, RawRecord, RecordOrigin, Upsert
from freshrag.ingest.indexing import (
    ChunkingConfig,
    DocumentIndexer,
    WriteDelete,
    WritePatch,
    WriteUpsert,
    collapse,
)
from freshrag.retrieve.contract import ChunkLayout, layout_of, point_id
from tests.unit.fakes import FakeDense, FakeSparse

ORIGIN = RecordOrigin("documents", 0, 0, 1000)
NOW = datetime(2026, 11, 28, tzinfo=UTC)


def up(doc: str, v: int, text: str = "some text here", tenant: str = "t") -> Upsert:
    raw = RawRecord(doc.encode(), f"raw-{doc}-{v}".encode(), ORIGIN)
    return Upsert(tenant, doc, v, "Title", text, NOW, ORIGIN, raw=raw)


def test_collapse_keeps_newest_per_document_in_order() -> None:
    events = [up("a", 1), up("b", 1), Delete("t", "a", 1, ORIGIN), up("c", 1), up("b", 2)]
    got = collapse(events)
    assert [(e.doc_id, e.version, type(e).__name__) for e in got] == [
        ("a", 1, "Delete"),
        ("c", 1, "Upsert"),
        ("b", 2, "Upsert"),
    ]


def test_indexer_embeds_batch_once_and_builds_contract_points() -> None:
    dense = FakeDense()
    indexer = DocumentIndexer(
        dense, FakeSparse(), ChunkingConfig(max_tokens=20, overlap=0), clock=lambda: NOW
    )
    result = indexer.process([up("a", 1, "alpha " * 50), up("b", 1), Delete("t", "c", 9, ORIGIN)])
    written = [p for w in result.writes if isinstance(w, WriteUpsert) for p in w.points]
    # one model call for the batch, each distinct chunk text once ("alpha " * 50 repeats)
    assert dense.calls == [len({p.chunk_hash for p in written})]
    assert len({p.chunk_hash for p in written}) < len(written)
    upserts = [w for w in result.writes if isinstance(w, WriteUpsert)]
    deletes = [w for w in result.writes if isinstance(w, WriteDelete)]
    assert [w.event.doc_id for w in upserts] == ["a", "b"]
    assert len(deletes) == 1 and deletes[0].event.version == 9
    a_points = upserts[0].points
    assert len(a_points) == 3 and all(p.chunk_count == 3 for p in a_points)
    assert [p.id for p in a_points] == [point_id("t", "a", i) for i in range(3)]
    assert a_points[0].payload()["indexed_at"] == NOW.isoformat()


def test_one_failing_document_goes_to_dlq_and_the_rest_are_written() -> None:
    indexer = DocumentIndexer(
        FakeDense(fail_on="poison"), FakeSparse(), ChunkingConfig(), clock=lambda: NOW
    )
    result = indexer.process([up("good1", 1), up("bad", 1, "poison pill"), up("good2", 1)])
    assert [w.event.doc_id for w in result.writes] == ["good1", "good2"]
    assert len(result.dead_letters) == 1
    dead = result.dead_letters[0]
    assert dead.step == "embed" and dead.error_class == "EmbeddingError"
    assert dead.value == b"raw-bad-1" and "poison" in dead.message


def layouts_of(
    held: dict[tuple[str, str], list[ChunkLayout]],
) -> Callable[[str | None, Sequence[str]], dict[tuple[str, str], list[ChunkLayout]]]:
    def lookup(
        tenant: str | None, doc_ids: Sequence[str]
    ) -> dict[tuple[str, str], list[ChunkLayout]]:
        return {
            k: v for k, v in held.items() if k[1] in doc_ids and (tenant is None or k[0] == tenant)
        }

    return lookup


def complete(version: int, n: int, offset: int = 0) -> list[ChunkLayout]:
    return [ChunkLayout(version, offset, i, n) for i in range(n)]


def test_upserts_complete_in_the_index_are_not_embedded_but_cleaned() -> None:
    held = {("t", "a"): complete(5, 1), ("t", "newer"): complete(9, 1)}
    dense = FakeDense()
    indexer = DocumentIndexer(dense, FakeSparse(), ChunkingConfig(), layouts=layouts_of(held))
    result = indexer.process([up("a", 5), up("b", 1), up("newer", 3)])
    assert sorted(e.doc_id for e in result.skipped) == ["a", "newer"]
    cleanup = [w for w in result.writes if isinstance(w, WriteUpsert) and not w.points]
    assert [(w.event.doc_id, w.keep_chunks) for w in cleanup] == [("a", 1)]
    embedded = [w.event.doc_id for w in result.writes if isinstance(w, WriteUpsert) and w.points]
    assert embedded == ["b"] and dense.calls == [1]


@pytest.mark.parametrize(
    "held",
    [
        complete(5, 3)[:2],  # crash after the first chunks: the tail is missing
        [*complete(5, 1), ChunkLayout(5, 0, 1, 3)],  # chunk counts disagree
        [ChunkLayout(5, 0, 0, 1), ChunkLayout(5, 0, 2, 1)],  # an index beyond the count
    ],
)
def test_half_written_versions_are_rewritten(held: list[ChunkLayout]) -> None:
    indexer = DocumentIndexer(
        FakeDense(), FakeSparse(), ChunkingConfig(), layouts=layouts_of({("t", "a"): held})
    )
    result = indexer.process([up("a", 5)])
    assert not result.skipped
    assert [len(w.points) for w in result.writes if isinstance(w, WriteUpsert)] == [1]


def test_a_version_less_upsert_is_rewritten_over_an_earlier_record_of_the_same_ms() -> None:
    late = replace(up("a", 5), origin=RecordOrigin("documents", 0, 7, 1000), explicit_version=False)
    indexer = DocumentIndexer(
        FakeDense(),
        FakeSparse(),
        ChunkingConfig(),
        layouts=layouts_of({("t", "a"): complete(5, 1)}),
    )
    result = indexer.process([late])
    assert not result.skipped and isinstance(result.writes[0], WriteUpsert)
    assert result.writes[0].points[0].offset == 7


def test_a_delete_of_unknown_tenant_with_no_flow_state_goes_to_the_named_tenant() -> None:
    """Never to every tenant that happens to hold the id (another tenant's native document)."""
    held = {("acme", "42"): complete(1, 1), ("default", "42"): complete(2, 1)}
    indexer = DocumentIndexer(FakeDense(), FakeSparse(), ChunkingConfig(), layouts=layouts_of(held))
    unknown = Delete("default", "42", None, ORIGIN, tenant_known=False, row_identity=True)
    result = indexer.process([unknown])
    assert [(w.event.tenant, w.event.doc_id) for w in result.writes] == [("default", "42")]


def at(event: Upsert, offset: int) -> Upsert:
    return replace(event, origin=RecordOrigin("documents", 0, offset, 1000))


def test_a_re_create_at_the_same_version_after_a_delete_in_one_batch_is_written() -> None:
    """v3 indexed; a version-less delete and a new v3 arrive together: the new text wins."""
    held = {("t", "a"): complete(3, 1, offset=0)}
    indexer = DocumentIndexer(FakeDense(), FakeSparse(), ChunkingConfig(), layouts=layouts_of(held))
    gone = Delete("t", "a", None, RecordOrigin("documents", 0, 1, 1000))
    result = indexer.process([gone, at(up("a", 3, "the new text"), 2)])
    assert [type(w).__name__ for w in result.writes] == ["WriteDelete", "WriteUpsert"]
    upsert = result.writes[1]
    assert isinstance(upsert, WriteUpsert) and upsert.points[0].text.endswith("the new text")


def test_a_delete_survives_when_the_upsert_replacing_it_in_the_batch_is_dead_lettered() -> None:
    indexer = DocumentIndexer(FakeDense(fail_on="poison"), FakeSparse(), ChunkingConfig())
    gone = Delete("t", "a", 2, RecordOrigin("documents", 0, 1, 1000))
    result = indexer.process([gone, at(up("a", 3, "poison pill"), 2)])
    assert [type(w).__name__ for w in result.writes] == ["WriteDelete"]
    assert [d.step for d in result.dead_letters] == ["embed"]


# -- only what changed is embedded (issue 16) ---------------------------------------------------

MANUAL = "\n\n".join(
    f"## Section {s}\n\n"
    + " ".join(f"Step {s}.{i} turns valve {s}{i} clockwise." for i in range(6))
    for s in range(8)
)


class MemoryIndex:
    """What the indexer's lookups read: the points a previous batch wrote (pure stand-in)."""

    def __init__(self) -> None:
        self.points: dict[str, Any] = {}

    def write(self, result: Any) -> None:
        for w in result.writes:
            if isinstance(w, WriteUpsert):
                for p in w.points:
                    self.points[p.id] = p
                for pid in [i for i, p in self.points.items() if p.doc_id == w.event.doc_id]:
                    if self.points[pid].chunk_index >= w.keep_chunks:
                        del self.points[pid]
            elif isinstance(w, WritePatch):
                for pid, p in list(self.points.items()):
                    if p.doc_id == w.event.doc_id:
                        self.points[pid] = replace(
                            p, version=w.payload["version"], metadata=w.payload["metadata"]
                        )

    def layouts(self, tenant: str | None, doc_ids: Sequence[str]) -> dict[Any, list[ChunkLayout]]:
        out: dict[Any, list[ChunkLayout]] = {}
        for p in self.points.values():
            if p.doc_id in doc_ids:
                out.setdefault((p.tenant, p.doc_id), []).append(layout_of(p.payload()))
        return out

    def vectors(self, tenant: str, doc_ids: Sequence[str]) -> dict[str, Any]:
        return {
            p.chunk_hash: (p.dense, p.sparse)
            for p in self.points.values()
            if p.doc_id in doc_ids and p.chunk_hash
        }


def indexer_on(index: MemoryIndex, dense: FakeDense, fingerprint: str = "fp") -> DocumentIndexer:
    return DocumentIndexer(
        dense,
        FakeSparse(),
        ChunkingConfig(max_tokens=40, overlap=0),
        layouts=index.layouts,
        clock=lambda: NOW,
        vectors=index.vectors,
        fingerprint=fingerprint,
    )


def moved(event: Upsert, offset: int, **changes: Any) -> Upsert:
    return replace(event, origin=replace(ORIGIN, offset=offset), **changes)


def test_a_one_sentence_edit_reembeds_only_the_chunks_around_it() -> None:
    index, dense = MemoryIndex(), FakeDense()
    indexer = indexer_on(index, dense)
    first = indexer.process([moved(up("m", 1, MANUAL), 1)])
    index.write(first)
    chunks = first.chunks_embedded
    assert chunks >= 8
    edited = MANUAL.replace("valve 53 clockwise.", "valve 53 back.")
    assert edited != MANUAL
    second = indexer.process([moved(up("m", 2, edited), 2)])
    assert (
        1 <= second.chunks_embedded <= 3 and second.chunks_reused == chunks - second.chunks_embedded
    )
    (write,) = second.writes
    assert isinstance(write, WriteUpsert) and len(write.points) == chunks
    before = {p.chunk_index: p for p in first.writes[0].points}  # type: ignore[union-attr]
    same = [p for p in write.points if p.chunk_hash == before[p.chunk_index].chunk_hash]
    assert all(p.dense == before[p.chunk_index].dense and p.version == 2 for p in same)
    changed = [p for p in write.points if p not in same]
    assert changed and all("back" in p.text for p in changed)


def test_vectors_are_not_reused_across_builds() -> None:
    index, dense = MemoryIndex(), FakeDense()
    index.write(indexer_on(index, dense, "model-a").process([moved(up("m", 1, MANUAL), 1)]))
    again = indexer_on(index, dense, "model-b").process([moved(up("m", 2, MANUAL + " More."), 2)])
    assert again.chunks_reused == 0


def test_a_metadata_only_change_is_a_payload_patch() -> None:
    index, dense = MemoryIndex(), FakeDense()
    indexer = indexer_on(index, dense)
    index.write(indexer.process([moved(up("m", 1, MANUAL), 1)]))
    calls = list(dense.calls)
    changed = moved(up("m", 2, MANUAL), 7, metadata={"team": "ops"}, url="https://x/m")
    result = indexer.process([changed])
    assert dense.calls == calls and result.chunks_embedded == 0 and result.patched == 1
    (write,) = result.writes
    assert isinstance(write, WritePatch) and write.keep_chunks == len(index.points)
    assert write.payload["version"] == 2 and write.payload["offset"] == 7
    assert write.payload["metadata"] == {"team": "ops"} and write.payload["url"] == "https://x/m"
    assert write.payload["acl"] == ["*"]
    # a crash after part of the patch: mixed versions, same content -> patched again
    index.write(result)
    first = next(iter(index.points))
    index.points[first] = replace(index.points[first], version=1)
    redo = indexer.process([moved(changed, 7, version=3)])
    assert isinstance(redo.writes[0], WritePatch) and redo.chunks_embedded == 0


def test_a_title_change_or_a_newer_index_is_not_a_patch() -> None:
    index, dense = MemoryIndex(), FakeDense()
    indexer = indexer_on(index, dense)
    index.write(indexer.process([moved(up("m", 5, MANUAL), 1)]))
    retitled = indexer.process([moved(up("m", 6, MANUAL), 2, title="New title")])
    assert retitled.patched == 0 and isinstance(retitled.writes[0], WriteUpsert)
    assert retitled.chunks_embedded > 0  # the title is in every chunk's embedded context
    older = indexer.process([moved(up("m", 4, MANUAL), 3, metadata={"x": 1})])
    assert older.patched == 0 and older.writes == [] and older.skipped


def test_a_repair_replay_is_rewritten_in_full_whatever_the_index_holds() -> None:
    """A replay exists because the index is wrong: never skipped as complete, never patched,
    and an index ahead of its source (a newer version) is deleted before the rewrite."""
    held = {("t", "a"): complete(5, 1), ("t", "ahead"): complete(9, 3)}
    dense = FakeDense()
    indexer = DocumentIndexer(dense, FakeSparse(), ChunkingConfig(), layouts=layouts_of(held))
    result = indexer.process(
        [replace(up("a", 5), replay=True), replace(up("ahead", 3, "other words"), replay=True)]
    )
    assert not result.skipped and result.patched == 0
    kinds = [
        (type(w).__name__, w.event.doc_id, len(getattr(w, "points", []))) for w in result.writes
    ]
    assert ("WriteDelete", "ahead", 0) in kinds
    assert [k for k in kinds if k[0] == "WriteUpsert"] == [
        ("WriteUpsert", "a", 1),
        ("WriteUpsert", "ahead", 1),
    ]
    delete = next(w for w in result.writes if isinstance(w, WriteDelete))
    assert delete.event.version is None  # all of it, the newer version included
    assert kinds.index(("WriteDelete", "ahead", 0)) < kinds.index(("WriteUpsert", "ahead", 1))
    assert dense.calls == [2]
    # the same events without the mark: "a" is complete (skipped), "ahead" is stale
    plain = indexer.process([up("a", 5), up("ahead", 3)])
    assert sorted(e.doc_id for e in plain.skipped) == ["a", "ahead"]
