"""The embed lanes: a large document goes to the background, small records pass it, and records
of one source key are still processed in arrival order, once each, whatever the timing."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrag.ingest.events import Delete, RecordOrigin, Upsert
from freshrag.ingest.flow import EmbedLanesLogic, Record, bucket_of, embed_buckets
from freshrag.ingest.lanes import LanePlanner, estimated_chunks

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class ManualExecutor(Executor):
    """Runs submitted jobs only when the test says so, one at a time in submission order (the
    flow's background executor has one thread)."""

    def __init__(self) -> None:
        self.queue: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.queue.append((future, fn, args))
        return future

    def run_next(self) -> bool:
        while self.queue:
            future, fn, args = self.queue.popleft()
            if future.set_running_or_notify_cancel():
                future.set_result(fn(*args))
                return True
        return False


def upsert(doc: str, version: int, size: int, offset: int) -> Upsert:
    return Upsert(
        "default",
        doc,
        version,
        "",
        "x" * size,
        NOW,
        RecordOrigin("t", 0, offset, 0),
    )


def delete(doc: str, version: int, offset: int) -> Delete:
    return Delete("default", doc, version, RecordOrigin("t", 0, offset, 0))


class Harness:
    def __init__(self, resume: Any = None, min_chunks: int = 4, batch_chunks: int = 8) -> None:
        self.executor = ManualExecutor()
        self.processed: list[list[int]] = []  # offsets of each process() call
        self.restored: list[Record] = []
        self.logic = self.build(resume, min_chunks, batch_chunks)

    def build(self, resume: Any, min_chunks: int = 4, batch_chunks: int = 8) -> EmbedLanesLogic:
        return EmbedLanesLogic(
            resume,
            max_wait=timedelta(seconds=3600),
            batch_chunks=batch_chunks,
            background_min_chunks=min_chunks,
            estimate=lambda r: estimated_chunks(r, 10, 0),  # 40 characters per chunk
            process=self.process,
            background=self.executor,
            on_restore=self.restored.extend,
        )

    def process(self, records: list[Record]) -> list[Any]:
        self.processed.append([e.origin.offset for r in records for e in r])
        return []

    def eof(self) -> None:
        """The real executor runs every job; this one runs them before `on_eof` waits."""
        self.logic.on_notify()
        while self.executor.run_next():
            pass
        self.logic.on_eof()

    def order(self) -> list[int]:
        return [o for call in self.processed for o in call]


def test_a_small_record_passes_a_large_one_in_the_background() -> None:
    h = Harness()
    h.logic.on_item([upsert("big", 1, 400, offset=0)])  # 10 chunks: background
    h.logic.on_item([upsert("small", 1, 10, offset=1)])
    h.logic.on_notify()  # deadline not reached: nothing yet
    assert h.processed == []
    h.logic.deadline = 0.0  # the small batch's max wait has passed
    h.logic.on_notify()
    assert h.processed == [[1]]  # the small one is written while the large one still waits
    assert h.executor.run_next()
    _out, discard = h.logic.on_notify()
    assert h.processed == [[1], [0]]
    assert discard  # nothing left: the bucket's state is dropped


def test_later_records_of_a_key_in_the_background_follow_it() -> None:
    h = Harness()
    h.logic.on_item([upsert("a", 1, 400, offset=0)])
    h.logic.on_item([delete("a", 2, offset=1)])  # small, but "a" is in the background
    h.logic.on_item([upsert("b", 1, 10, offset=2)])
    h.logic.deadline = 0.0
    h.logic.on_notify()
    h.eof()
    assert h.order() == [2, 0, 1]


def test_a_large_record_flushes_its_keys_small_buffer_first() -> None:
    h = Harness()
    h.logic.on_item([upsert("a", 1, 10, offset=0)])
    h.logic.on_item([upsert("a", 2, 400, offset=1)])
    assert h.processed == [[0]]
    h.eof()
    assert h.order() == [0, 1]


def test_the_small_batch_is_bounded_by_estimated_chunks() -> None:
    h = Harness(batch_chunks=8)
    for i in range(3):
        h.logic.on_item([upsert(f"d{i}", 1, 100, offset=i)])  # 3 chunks each
    assert h.processed == [[0, 1, 2]]  # 9 >= 8 chunks: emitted without waiting


def test_snapshot_holds_everything_not_written_and_restores_it_in_its_lane() -> None:
    h = Harness()
    h.logic.on_item([upsert("big", 1, 400, offset=0)])
    h.logic.on_item([upsert("s", 1, 10, offset=1)])
    snap = h.logic.snapshot()
    assert [r[0].origin.offset for r in snap[0]] == [1]
    assert [r[0].origin.offset for r in snap[2]] == [0]
    again = Harness(resume=snap)
    assert sorted(e.origin.offset for r in again.restored for e in r) == [0, 1]
    again.eof()
    assert sorted(again.order()) == [0, 1]


def test_old_two_field_snapshots_still_resume() -> None:
    h = Harness(resume=([[upsert("s", 1, 10, offset=5)]], None))
    h.eof()
    assert h.order() == [5]


def test_a_failed_background_job_fails_the_flow() -> None:
    h = Harness()

    def boom(records: list[Record]) -> list[Any]:
        raise RuntimeError("store unavailable")

    h.logic.process = boom
    h.logic.on_item([upsert("big", 1, 400, offset=0)])
    h.executor.queue[0][0].set_exception(RuntimeError("store unavailable"))
    with pytest.raises(RuntimeError, match="store unavailable"):
        h.logic.on_notify()


def test_buckets_follow_the_worker_count() -> None:
    assert embed_buckets(1) < embed_buckets(2) < embed_buckets(8)
    used = {bucket_of(upsert(f"doc-{i}", 1, 1, i), embed_buckets(8)) for i in range(2000)}
    assert len(used) == embed_buckets(8)


def test_planner_routes() -> None:
    p = LanePlanner(background_min_chunks=4)
    assert p.route({"a"}, 1) == "small"
    assert p.route({"a"}, 4) == "background"
    p.add_small({"a"})
    assert p.route({"a"}, 9) == "flush_then_background"
    p.add_background({"b"})
    p.add_background({"b"})
    assert p.route({"b"}, 1) == "background"
    p.background_done({"b"})
    assert p.route({"b"}, 1) == "background"
    p.background_done({"b"})
    assert p.route({"b"}, 1) == "small"


step = st.one_of(
    st.tuples(st.just("item"), st.sampled_from("abcd"), st.sampled_from([10, 100, 400])),
    st.tuples(st.just("run"), st.just(""), st.just(0)),
    st.tuples(st.just("deadline"), st.just(""), st.just(0)),
    st.tuples(st.just("crash"), st.just(""), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_any_timing_keeps_per_key_order_and_loses_nothing(ops: list[tuple[str, str, int]]) -> None:
    """Background jobs finish at arbitrary moments, the small batch's wait expires at arbitrary
    moments, and the process may crash (restore from the last snapshot, the executor's queue
    lost): each key's records are processed in arrival order, and every record at least once."""
    h = Harness()
    keys: dict[int, str] = {}
    for n, (kind, key, size) in enumerate(ops):
        if kind == "item":
            keys[n] = key
            h.logic.on_item([upsert(key, n, size, offset=n)])
        elif kind == "run":
            h.executor.run_next()
            h.logic.on_notify()
        elif kind == "deadline":
            h.logic.deadline = 0.0 if h.logic.small else None
            h.logic.on_notify()
        else:
            snap = h.logic.snapshot()
            h.executor = ManualExecutor()  # jobs in flight die with the process
            h.logic = h.build(snap)
    h.eof()
    order = h.order()
    assert set(order) == set(keys)
    for key in set(keys.values()):
        mine = [o for o in order if keys[o] == key]
        # replays after a crash may repeat a record, but never take one back behind an older
        # one: the last processing of each record follows the arrival order
        last_pass = sorted(set(mine), key=lambda o: max(i for i, x in enumerate(mine) if x == o))
        assert last_pass == sorted(set(mine))
