"""Crash atomicity of index writes, by fault injection on a real Qdrant Edge store.

A wrapper fails the real store at its k-th write call, for every k of a multi-batch sequence of
grows, shrinks, deletes and re-creates; a replay (from the crashed batch with the state of its
start, as bytewax recovery does, or from the very beginning with the state lost) must leave the
index exact. The embedder is a deterministic fake here: the store and the write path are what
is under test, and the real model would only make the 100+ runs slow.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from freshrag.ingest.drift import compare, indexed_from_payloads, winning_events
from freshrag.ingest.events import ChangeEvent, Delete, RawRecord, RecordOrigin, Upsert
from freshrag.ingest.index_writer import IndexWriter, StoreUnavailableError, is_transient
from freshrag.ingest.indexing import ChunkingConfig, DocumentIndexer, WriteUpsert
from freshrag.ingest.ordering import Applied, gate
from freshrag.retrieve.contract import ChunkPoint, Store
from freshrag.retrieve.edge_store import EdgeStore
from tests.integration.harness import index_state
from tests.unit.fakes import FakeDense, FakeSparse

pytestmark = [pytest.mark.integration]

NOW = datetime(2026, 11, 28, tzinfo=UTC)
CHUNKING = ChunkingConfig(max_tokens=20, overlap=0)
WRITE_CALLS = {"upsert_chunks", "delete_versions_below", "delete_document"}


class SimulatedCrash(BaseException):
    """Not an Exception: nothing in the write path may catch it, like a kill -9."""


class FaultyStore:
    """A real store that dies at its k-th write call (or raises `error` for calls in `fail`)."""

    def __init__(
        self,
        inner: Store,
        crash_at: int | None = None,
        fail: set[int] | None = None,
        error: Exception | None = None,
    ) -> None:
        self.inner = inner
        self.crash_at = crash_at
        self.fail = fail or set()
        self.error = error
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name not in WRITE_CALLS:
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            if self.writes == self.crash_at:
                raise SimulatedCrash(f"crash at write call {self.writes}")
            if self.writes in self.fail and self.error is not None:
                raise self.error
            return target(*args, **kwargs)

        return call


def words(n_chunks: int, tag: str) -> str:
    """Text that the fake tokenizer splits into exactly `n_chunks` chunks of 20 words."""
    return " ".join(f"{tag}{i}" for i in range(n_chunks * 20))


def upsert(doc: str, version: int, n_chunks: int, offset: int) -> Upsert:
    origin = RecordOrigin("documents", 0, offset, 1_000)
    raw = RawRecord(doc.encode(), f"{doc}@{version}".encode(), origin)
    text = words(n_chunks, f"{doc}v{version}w")
    return Upsert("t", doc, version, doc.title(), text, NOW, origin, raw=raw)


def delete(doc: str, version: int | None, offset: int) -> Delete:
    return Delete("t", doc, version, RecordOrigin("documents", 0, offset, 1_000))


def batches() -> list[list[ChangeEvent]]:
    """Grow, shrink, delete, re-create and an out-of-order replay, over several batches."""
    seq: list[list[tuple[str, Any, ...]]] = [
        [("up", "a", 1, 2), ("up", "b", 1, 5), ("up", "c", 1, 1)],
        [("up", "a", 2, 6), ("up", "b", 2, 2), ("del", "c", 2)],  # grow, shrink, delete
        [("up", "c", 3, 3), ("up", "a", 1, 2), ("del", "b", None)],  # re-create, stale, delete
        [("up", "b", 4, 4), ("up", "a", 3, 1)],  # re-create after a version-less delete, shrink
    ]
    out: list[list[ChangeEvent]] = []
    offset = 0
    for batch in seq:
        events: list[ChangeEvent] = []
        for kind, doc, version, *rest in batch:
            events.append(
                upsert(doc, version, rest[0], offset)
                if kind == "up"
                else delete(doc, version, offset)
            )
            offset += 1
        out.append(events)
    return out


def expected_state(all_batches: list[list[ChangeEvent]]) -> dict[tuple[str, str], tuple[int, int]]:
    """The model: the last applied upsert of every live document, per the gate's order."""
    state: dict[str, dict[str, Applied] | None] = {}
    live: dict[tuple[str, str], tuple[int, int]] = {}
    for batch in all_batches:
        for event in batch:
            new, out = gate(state.get(event.doc_id), event, 0)
            state[event.doc_id] = new
            for e in out:
                if isinstance(e, Upsert):
                    live[(e.tenant, e.doc_id)] = (e.version, math.ceil(len(e.text.split()) / 20))
                else:
                    live.pop((e.tenant, e.doc_id), None)
    return live


def run_batches(
    store: Store,
    all_batches: list[list[ChangeEvent]],
    gate_state: dict[str, dict[str, Applied] | None],
    checkpoint: list[dict[str, dict[str, Applied] | None]] | None = None,
) -> None:
    """The flow in miniature: gate -> indexer (asks the index) -> writer, batch by batch."""
    indexer = DocumentIndexer(FakeDense(), FakeSparse(), CHUNKING, layouts=store.chunk_layouts)
    writer = IndexWriter(store, max_points_per_call=2, retry_budget_s=1)
    for batch in all_batches:
        if checkpoint is not None:
            checkpoint.append(dict(gate_state))  # the state a recovery snapshot would hold
        gated: list[ChangeEvent] = []
        for event in batch:
            new, out = gate(gate_state.get(event.doc_id), event, 0)
            gate_state[event.doc_id] = new
            gated.extend(out)
        result = indexer.process(gated)
        outcome = writer.apply(result.writes)
        assert not outcome.dead_letters and not result.dead_letters


def exact(store: Store) -> dict[tuple[str, str], tuple[int, int]]:
    """The index as (version, chunk count), asserting chunks 0..n-1 of one count, no extras."""
    state = index_state(store)  # raises when a document holds several versions
    for (tenant, doc), (_, n) in state.items():
        layouts = store.chunk_layouts(tenant, [doc])[(tenant, doc)]
        assert sorted(p.chunk_index for p in layouts) == list(range(n)), (doc, layouts)
        assert {p.chunk_count for p in layouts} == {n}, (doc, layouts)
    return state


def assert_verify_clean(store: Store, all_batches: list[list[ChangeEvent]]) -> None:
    """`freshrag verify`'s comparison: the index against the log's winning events."""
    log = [event for batch in all_batches for event in batch]
    report = compare(
        winning_events(log), indexed_from_payloads(store.scroll_payloads()), topic="documents"
    )
    assert report.clean, [d.as_dict() for d in report.drift]


def total_write_calls(tmp_path: Path) -> int:
    store = FaultyStore(EdgeStore(tmp_path / "count"))
    run_batches(store, batches(), {})  # type: ignore[arg-type]
    return store.writes


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> int:
    return total_write_calls(tmp_path_factory.mktemp("calls"))


@pytest.mark.parametrize("resume", ["crashed_batch", "beginning_state_lost"])
def test_a_crash_at_every_write_call_then_replay_leaves_the_index_exact(
    tmp_path: Path, calls: int, resume: str
) -> None:
    all_batches = batches()
    want = expected_state(all_batches)
    assert calls >= 20, "the sequence must span many store calls"
    for k in range(1, calls + 1):
        path = tmp_path / f"k{k}"
        real = EdgeStore(path)
        faulty = FaultyStore(real, crash_at=k)
        checkpoints: list[dict[str, dict[str, Applied] | None]] = []
        with pytest.raises(SimulatedCrash):
            run_batches(faulty, all_batches, {}, checkpoints)  # type: ignore[arg-type]
        if resume == "crashed_batch":
            crashed = len(checkpoints) - 1
            run_batches(real, all_batches[crashed:], dict(checkpoints[crashed]))
        else:
            run_batches(real, all_batches, {})
        assert exact(real) == want, f"crash at write call {k} of {calls} ({resume})"
        assert_verify_clean(real, all_batches)
        real.close()


def test_a_document_the_store_refuses_is_dead_lettered_and_the_rest_written(
    tmp_path: Path,
) -> None:
    store = EdgeStore(tmp_path / "idx")
    indexer = DocumentIndexer(FakeDense(), FakeSparse(), CHUNKING, layouts=store.chunk_layouts)
    good = [upsert(f"g{i}", 1, 2, i) for i in range(3)]
    bad = upsert("bad", 1, 1, 9)
    result = indexer.process([good[0], bad, good[1], good[2]])
    writes = []
    for w in result.writes:
        if isinstance(w, WriteUpsert) and w.event.doc_id == "bad":
            # a payload the real store rejects: this stands in for any non-transient refusal
            poisoned: list[ChunkPoint] = [replace(p, metadata={"x": math.nan}) for p in w.points]
            w = replace(w, points=poisoned)
        writes.append(w)
    outcome = IndexWriter(store).apply(writes)
    assert [d.step for d in outcome.dead_letters] == ["index"]
    dead = outcome.dead_letters[0]
    assert dead.value == b"bad@1" and "bad" in dead.message
    assert index_state(store) == {("t", f"g{i}"): (1, 2) for i in range(3)}


def test_transient_store_errors_are_retried_and_nothing_is_lost(tmp_path: Path) -> None:
    real = EdgeStore(tmp_path / "idx")
    flaky = FaultyStore(real, fail={1, 2, 3, 5}, error=ConnectionError("connection refused"))
    retries: list[BaseException] = []
    indexer = DocumentIndexer(FakeDense(), FakeSparse(), CHUNKING, layouts=real.chunk_layouts)
    writes = indexer.process([upsert("a", 1, 3, 0), upsert("b", 1, 1, 1)]).writes
    outcome = IndexWriter(
        flaky,  # type: ignore[arg-type]
        max_points_per_call=2,
        on_retry=retries.append,
        sleep=lambda _s: None,
    ).apply(writes)
    assert not outcome.dead_letters and len(retries) == 4
    assert exact(real) == {("t", "a"): (1, 3), ("t", "b"): (1, 1)}


def test_past_the_retry_budget_the_writer_fails_loudly_and_never_skips(tmp_path: Path) -> None:
    real = EdgeStore(tmp_path / "idx")
    down = FaultyStore(real, fail=set(range(1, 10_000)), error=TimeoutError("timed out"))
    writes = DocumentIndexer(FakeDense(), FakeSparse(), CHUNKING).process([upsert("a", 1, 1, 0)])
    writer = IndexWriter(down, retry_budget_s=0.3)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailableError, match="unavailable"):
        writer.apply(writes.writes)
    assert real.count() == 0 and down.writes > 1


def test_a_store_that_refuses_writes_and_probes_is_an_outage_not_a_bad_document(
    tmp_path: Path,
) -> None:
    real = EdgeStore(tmp_path / "idx")
    writes = DocumentIndexer(FakeDense(), FakeSparse(), CHUNKING).process([upsert("a", 1, 1, 0)])
    real.close()  # every call now fails with a non-transient error
    with pytest.raises(StoreUnavailableError, match="probe"):
        IndexWriter(real, retry_budget_s=0.3).apply(writes.writes)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (RuntimeError("Service Unavailable"), True),
        (ValueError("payload value is NaN"), False),
        (RuntimeError("wrong input: vector dimension"), False),
    ],
)
def test_transient_errors_are_told_from_bad_documents(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient
