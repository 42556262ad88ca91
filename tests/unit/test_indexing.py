"""Version gate, batch collapse and the batch indexer (fakes for the embedder ports)."""

from __future__ import annotations

from datetime import UTC, datetime

from freshrag.ingest.events import Delete, RawRecord, RecordOrigin, Upsert
from freshrag.ingest.indexing import (
    ChunkingConfig,
    DocumentIndexer,
    WriteDelete,
    WriteUpsert,
    collapse,
    version_gate,
)
from freshrag.retrieve.contract import point_id
from tests.unit.fakes import FakeDense, FakeSparse

ORIGIN = RecordOrigin("documents", 0, 0, 1000)
NOW = datetime(2026, 11, 28, tzinfo=UTC)


def up(doc: str, v: int, text: str = "some text here", tenant: str = "t") -> Upsert:
    raw = RawRecord(doc.encode(), f"raw-{doc}-{v}".encode(), ORIGIN)
    return Upsert(tenant, doc, v, "Title", text, NOW, ORIGIN, raw=raw)


def test_gate_drops_older_and_equal_versions() -> None:
    state = None
    applied = []
    for v in (3, 1, 2, 3, 5):
        state, out = version_gate(state, up("a", v))
        if out is not None:
            applied.append(out.version)
    assert applied == [3, 5] and state == (5, False)
    state, out = version_gate(state, Delete("t", "a", 4, ORIGIN))
    assert out is None
    state, out = version_gate(state, Delete("t", "a", 6, ORIGIN))
    assert out is not None and state == (6, True)


def test_gate_lets_a_delete_win_a_version_tie_once() -> None:
    state, _ = version_gate(None, up("a", 7))
    state, out = version_gate(state, Delete("t", "a", 7, ORIGIN))
    assert out is not None and state == (7, True)
    state, out = version_gate(state, Delete("t", "a", 7, ORIGIN))  # replayed delete
    assert out is None
    state, out = version_gate(state, up("a", 7))  # replayed upsert must not resurrect
    assert out is None and state == (7, True)


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
    assert dense.calls == [
        len([p for w in result.writes if isinstance(w, WriteUpsert) for p in w.points])
    ]
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


def test_upserts_already_in_the_index_are_skipped() -> None:
    def lookup(tenant: str, doc_ids: object) -> dict[str, int]:
        return {"a": 5}

    indexer = DocumentIndexer(FakeDense(), FakeSparse(), ChunkingConfig(), indexed_versions=lookup)
    result = indexer.process([up("a", 5), up("b", 1), up("a2", 1)])
    assert [e.doc_id for e in result.skipped] == ["a"]
    assert [w.event.doc_id for w in result.writes] == ["b", "a2"]
