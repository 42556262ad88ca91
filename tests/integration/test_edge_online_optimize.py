"""Online HNSW optimize on a real Qdrant Edge shard (`EdgeStore.optimize_online`).

The store copies its shard, optimizes the copy in a subprocess, journals the writes made
meanwhile, replays them into the copy and swaps it in. These tests compare what a store that
optimized online holds against a second store fed the same writes that never optimized, run
searches from other threads during the optimize, kill the optimizer and the whole process at
every step, and inject failures between steps. `indexing_threshold_kb=1` makes the engine build
HNSW on these small shards; each test checks the copy really got it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from freshrag.retrieve.contract import DENSE_DIM, ChunkPoint, SearchFilter, SparseVector
from freshrag.retrieve.edge_store import (
    EdgeAutoOptimizer,
    EdgeStore,
    OptimizeError,
)

ROOT = Path(__file__).resolve().parents[2]
COLL = "online"
BASE_DOCS = 1000  # two chunks each
SMALL_DOCS = 150
STABLE_EVERY = 97  # base docs 0, 97, 194, ... are only read
THRESHOLD_KB = 1  # the engine's default (~10 MB of vectors) would leave these shards plain
NOW = datetime(2025, 6, 1, tzinfo=UTC)
# The optimize's steps in order; the hook may write at WRITE_STEPS (the write lock is free).
STEPS = [
    "copied",
    "optimizer-started",
    "optimized",
    "opened",
    "replayed",
    "flushed",
    "link-made",
    "linked",
    "swapped",
]
WRITE_STEPS = ["copied", "optimizer-started", "opened", "replayed"]
COMMITTED = {"linked", "swapped"}


def vector(seed: str) -> list[float]:
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    v = rng.standard_normal(DENSE_DIM)
    return [float(x) for x in v / np.linalg.norm(v)]


def chunk(
    tenant: str, doc_id: str, version: int, idx: int, count: int, tag: str = ""
) -> ChunkPoint:
    seed = f"{tenant}/{doc_id}/{version}/{idx}/{tag}"
    return ChunkPoint(
        tenant=tenant,
        doc_id=doc_id,
        version=version,
        chunk_index=idx,
        chunk_count=count,
        text=f"{doc_id} v{version} chunk {idx} {tag}",
        title=doc_id,
        url=None,
        source="test",
        updated_at=NOW,
        indexed_at=NOW,
        metadata={"tag": tag or "base"},
        dense=vector(seed),
        sparse=SparseVector(
            [1, 100 + idx, zlib.crc32(doc_id.encode()) % 5000 + 1000], [0.5, 1.0, 2.0]
        ),
    )


def base_chunks(docs: int) -> list[ChunkPoint]:
    return [chunk(f"t{d % 2}", f"base-{d}", 1, i, 2) for d in range(docs) for i in range(2)]


class Target:
    """Applies each write to one store, or to several in the same order (a mirror)."""

    def __init__(self, *stores: EdgeStore) -> None:
        self.stores = stores
        self.lock = threading.Lock()

    def upsert(self, chunks: list[ChunkPoint]) -> None:
        with self.lock:
            for s in self.stores:
                s.upsert_chunks(chunks)

    def delete_document(self, tenant: str, doc_id: str, up_to: int | None = None) -> None:
        with self.lock:
            for s in self.stores:
                s.delete_document(tenant, doc_id, up_to)

    def delete_versions_below(self, tenant: str, doc_id: str, version: int, keep: int) -> None:
        with self.lock:
            for s in self.stores:
                s.delete_versions_below(tenant, doc_id, version, keep)


def writes(target: Target, tag: str, base_docs: int, many: int = 0) -> None:
    """Every kind of write: new docs, re-upserts of the same ids, a shrinking new version
    (upsert + delete_versions_below), deletes, a doc written then deleted, and `many`
    single-chunk upserts (one journal entry each)."""
    n = zlib.crc32(tag.encode())
    shrink, drop, redo = (
        d + 1 if d % STABLE_EVERY == 0 else d  # stable docs are never written
        for d in (n % base_docs, (n // 7) % base_docs, (n // 49) % base_docs)
    )
    target.upsert([chunk("t0", f"{tag}-new", 1, i, 3) for i in range(3)])
    target.upsert([chunk(f"t{redo % 2}", f"base-{redo}", 1, i, 2, tag) for i in range(2)])
    target.upsert([chunk(f"t{redo % 2}", f"base-{redo}", 1, i, 2, tag + "again") for i in range(2)])
    target.upsert([chunk(f"t{shrink % 2}", f"base-{shrink}", 2, 0, 1, tag)])
    target.delete_versions_below(f"t{shrink % 2}", f"base-{shrink}", 2, 1)
    target.delete_document(f"t{drop % 2}", f"base-{drop}")
    target.upsert([chunk("t1", f"{tag}-gone", 1, 0, 1)])
    target.delete_document("t1", f"{tag}-gone", 1)
    for k in range(many):
        target.upsert([chunk("t1", f"{tag}-many-{k}", 1, 0, 1)])


def snapshot(store: EdgeStore) -> set[tuple[Any, ...]]:
    return {
        (p["tenant"], p["doc_id"], p["version"], p["chunk_index"], p["text"])
        for p in store.scroll_payloads()
    }


def build(path: Path, docs: int) -> Path:
    store = EdgeStore(path, COLL)
    store.upsert_chunks(base_chunks(docs))
    store.close()
    return path


def copy_of(base: Path, dst: Path) -> EdgeStore:
    shutil.copytree(base, dst, symlinks=True)
    return EdgeStore(dst, COLL)


def entries(path: Path) -> set[str]:
    return {
        e.name for e in path.iterdir() if e.name.startswith(COLL) and "watermarks" not in e.name
    }


def live_gen(path: Path) -> str:
    return os.readlink(path / COLL)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("base"), BASE_DOCS)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("small"), SMALL_DOCS)


@pytest.fixture
def stores(tmp_path: Path, base: Path) -> Iterator[tuple[EdgeStore, EdgeStore]]:
    live, ref = copy_of(base, tmp_path / "live"), copy_of(base, tmp_path / "ref")
    yield live, ref
    live.close()
    ref.close()


def top_doc(store: EdgeStore, tenant: str, doc_id: str, idx: int = 0, version: int = 1) -> str:
    hits = store.query_dense(vector(f"{tenant}/{doc_id}/{version}/{idx}/"), SearchFilter(tenant), 3)
    return hits[0].doc_id if hits else ""


# -- the main claim --------------------------------------------------------------------------


def test_writes_and_searches_during_online_optimize(
    tmp_path: Path, stores: tuple[EdgeStore, EdgeStore]
) -> None:
    live, ref = stores
    both = Target(live, ref)
    assert live.unindexed_points() == 2 * BASE_DOCS  # a full scan before
    stable = [f"base-{d}" for d in range(0, BASE_DOCS, STABLE_EVERY)]  # queried throughout
    checked: dict[str, int] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_stable(step: str) -> None:
        try:
            for doc in stable:
                tenant = f"t{int(doc.split('-')[1]) % 2}"
                hits = live.query_dense(
                    vector(f"{tenant}/{doc}/1/0/"), SearchFilter(tenant, doc_ids=[doc]), 2
                )
                assert hits and hits[0].doc_id == doc
                checked[step] = checked.get(step, 0) + 1
        except BaseException as exc:
            errors.append(exc)

    def hook(step: str) -> None:
        if step in WRITE_STEPS:  # writes land in the journal, many at optimizer-started
            writes(both, f"hook-{step}", BASE_DOCS, many=300 if step == "optimizer-started" else 0)
            reader = threading.Thread(target=search_stable, args=(step,))
            reader.start()
            reader.join()  # searches from another thread complete while the optimize runs

    def keep_writing() -> None:  # like ingest: writes throughout, until after the swap
        k = 0
        while not stop.is_set():
            writes(both, f"writer-{k}", BASE_DOCS)
            k += 1

    def keep_searching() -> None:  # readers that straddle the swap must not fail
        while not stop.is_set():
            search_stable("background")

    live.step_hook = hook
    threads = [threading.Thread(target=keep_writing), threading.Thread(target=keep_searching)]
    for t in threads:
        t.start()
    try:
        result = live.optimize_online(indexing_threshold_kb=THRESHOLD_KB)
        writes(both, "after", BASE_DOCS)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert all(checked.get(step) == len(stable) for step in WRITE_STEPS), checked
    assert result.swapped
    assert result.copy_indexed_vectors == 2 * result.copy_points  # HNSW covers every vector
    assert result.journaled_ops > 300 and result.replayed_early > 256
    assert snapshot(live) == snapshot(ref)
    for tenant, doc in [
        ("t0", "hook-copied-new"),
        ("t0", "hook-replayed-new"),
        ("t0", "after-new"),
    ]:
        assert top_doc(live, tenant, doc) == top_doc(ref, tenant, doc) == doc
    assert live_gen(tmp_path / "live") == f"{COLL}@1"
    assert entries(tmp_path / "live") == {COLL, f"{COLL}@1", f"{COLL}.lock"}  # old copy removed
    expected = snapshot(ref)
    live.close()
    reopened = EdgeStore(tmp_path / "live", COLL)
    assert snapshot(reopened) == expected
    reopened.close()


def test_optimized_copy_serves_from_hnsw_and_the_next_one_starts_from_it(
    tmp_path: Path, small: Path
) -> None:
    store = copy_of(small, tmp_path / "s")
    try:
        before = store.index_info()
        assert before["indexed_vectors"] == before["points"] == 2 * SMALL_DOCS  # sparse only
        first = store.optimize_online(indexing_threshold_kb=THRESHOLD_KB)
        assert first.swapped and first.unindexed_before == 2 * SMALL_DOCS
        assert first.unindexed_after == 0 and store.unindexed_points() == 0
        assert store.index_info()["indexed_vectors"] == 4 * SMALL_DOCS
        store.upsert_chunks([chunk("t0", f"fresh-{i}", 1, 0, 1) for i in range(40)])
        assert store.unindexed_points() == 40  # new points land in a plain segment
        second = store.optimize_online(indexing_threshold_kb=THRESHOLD_KB)
        assert second.swapped and store.unindexed_points() == 0
        assert live_gen(tmp_path / "s") == f"{COLL}@2"
        assert entries(tmp_path / "s") == {COLL, f"{COLL}@2", f"{COLL}.lock"}
        assert top_doc(store, "t0", "fresh-7") == "fresh-7"
        assert store.count() == 2 * SMALL_DOCS + 40
    finally:
        store.close()


def test_a_reader_holding_the_old_shard_finishes_after_the_swap(tmp_path: Path, base: Path) -> None:
    """A scroll started before the swap keeps paging the old shard (4 pages here); the old
    shard is closed and removed only once that reader is done."""
    store = copy_of(base, tmp_path / "r")
    swapped = threading.Event()
    store.step_hook = lambda step: swapped.set() if step == "linked" else None
    pages = store._scroll(None, ["doc_id"])
    first = next(pages)
    done: list[Any] = []
    optimizer = threading.Thread(
        target=lambda: done.append(store.optimize_online(indexing_threshold_kb=THRESHOLD_KB))
    )
    optimizer.start()
    try:
        assert swapped.wait(300)
        store.upsert_chunks([chunk("t0", "after-swap", 1, 0, 1)])  # goes to the new shard
        rest = list(pages)  # the old shard, still open for this reader
        assert len(rest) + 1 == 2 * BASE_DOCS and first
        optimizer.join(300)
        assert done and done[0].swapped
        assert store.count() == 2 * BASE_DOCS + 1
        assert entries(tmp_path / "r") == {COLL, f"{COLL}@1", f"{COLL}.lock"}
    finally:
        optimizer.join(300)
        store.close()


# -- failures: the optimizer killed, a step failing, the process killed ---------------------


def test_kill_9_of_the_optimizer_leaves_the_live_shard_with_every_write(
    tmp_path: Path, small: Path
) -> None:
    store = copy_of(small, tmp_path / "k")
    ref = copy_of(small, tmp_path / "ref")
    both = Target(store, ref)
    killed: list[int] = []

    def hook(step: str) -> None:
        if step == "optimizer-started":
            writes(both, "before-kill", SMALL_DOCS)
            assert store.optimizer_pid is not None
            os.kill(store.optimizer_pid, signal.SIGKILL)
            killed.append(store.optimizer_pid)

    store.step_hook = hook
    with pytest.raises(OptimizeError, match="killed by signal 9"):
        store.optimize_online(indexing_threshold_kb=THRESHOLD_KB)
    assert killed and not store.optimizing
    writes(both, "after-kill", SMALL_DOCS)  # the journal is off, the live shard serves on
    assert snapshot(store) == snapshot(ref)
    assert entries(tmp_path / "k") == {COLL, f"{COLL}@0", f"{COLL}.lock"}  # copy removed
    store.close()
    reopened = EdgeStore(tmp_path / "k", COLL)
    try:
        assert snapshot(reopened) == snapshot(ref)
        assert reopened.unindexed_points() > 0  # nothing was swapped in
    finally:
        reopened.close()
        ref.close()


@pytest.mark.parametrize("failing", ["optimized", "opened", "replayed", "flushed", "linked"])
def test_a_step_that_raises_leaves_a_consistent_store(
    tmp_path: Path, small: Path, failing: str
) -> None:
    """Fault injection: the hook raises at one step. Before the commit the live shard carries
    on and the copy is removed; after it (`linked`) the copy is live in this process and on
    disk alike. Either way every write is there, now and after reopening."""
    store = copy_of(small, tmp_path / "f")
    ref = copy_of(small, tmp_path / "ref")
    both = Target(store, ref)

    def hook(step: str) -> None:
        if step in WRITE_STEPS:
            writes(both, f"w-{step}", SMALL_DOCS)
        if step == failing:
            raise RuntimeError(f"injected at {step}")

    store.step_hook = hook
    with pytest.raises(RuntimeError, match=f"injected at {failing}"):
        store.optimize_online(indexing_threshold_kb=THRESHOLD_KB)
    writes(both, "after", SMALL_DOCS)
    assert snapshot(store) == snapshot(ref)
    gen = f"{COLL}@1" if failing in COMMITTED else f"{COLL}@0"
    assert live_gen(tmp_path / "f") == gen
    assert entries(tmp_path / "f") == {COLL, gen, f"{COLL}.lock"}
    store.close()
    reopened = EdgeStore(tmp_path / "f", COLL)
    try:
        assert snapshot(reopened) == snapshot(ref)
    finally:
        reopened.close()
        ref.close()


def crash_child(path: str, crash_at: str) -> None:
    """Run in a subprocess: optimize online, writing at each WRITE_STEP, and SIGKILL this
    process at `crash_at` (the optimizer subprocess dies with it)."""
    store = EdgeStore(Path(path), COLL)

    def hook(step: str) -> None:
        if step in WRITE_STEPS:
            writes(Target(store), f"w-{step}", SMALL_DOCS)
        if step == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)

    store.step_hook = hook
    store.optimize_online(indexing_threshold_kb=THRESHOLD_KB)
    os._exit(3)  # never reached: the hook kills this process first


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", STEPS)
def test_kill_9_at_any_step_reopens_with_every_write(
    tmp_path: Path, small: Path, crash_at: str
) -> None:
    path = tmp_path / "c"
    shutil.copytree(small, path, symlinks=True)
    code = (
        "from tests.integration.test_edge_online_optimize import crash_child; "
        f"crash_child({str(path)!r}, {crash_at!r})"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    ref = copy_of(small, tmp_path / "ref")
    for step in STEPS[: STEPS.index(crash_at) + 1]:  # the writes acknowledged before the kill
        if step in WRITE_STEPS:
            writes(Target(ref), f"w-{step}", SMALL_DOCS)
    reopened = EdgeStore(path, COLL)
    try:
        assert snapshot(reopened) == snapshot(ref)
        gen = f"{COLL}@1" if crash_at in COMMITTED else f"{COLL}@0"
        assert live_gen(path) == gen
        assert entries(path) == {COLL, gen, f"{COLL}.lock"}  # leftovers removed at open
        if crash_at in COMMITTED:
            assert reopened.unindexed_points() < 2 * SMALL_DOCS  # the HNSW copy is live
    finally:
        reopened.close()
        ref.close()


# -- layout: older plain directories, crashes while moving them, leftovers -------------------


def test_plain_directory_layout_is_moved_behind_the_link_and_crash_states_recover(
    tmp_path: Path, small: Path
) -> None:
    path = tmp_path / "p"
    shutil.copytree(small, path, symlinks=True)
    store = EdgeStore(path, COLL)
    expected = snapshot(store)
    store.close()
    # the older layout: `collection` is the shard directory itself
    (path / COLL).unlink()
    os.rename(path / f"{COLL}@0", path / COLL)
    # plus what crashes leave: a half-made link and an uncommitted copy
    os.symlink(f"{COLL}@0", path / f"{COLL}@link")
    shutil.copytree(path / COLL, path / f"{COLL}@5")
    store = EdgeStore(path, COLL)
    assert snapshot(store) == expected
    assert live_gen(path) == f"{COLL}@0"
    assert entries(path) == {COLL, f"{COLL}@0", f"{COLL}.lock"}
    store.close()
    # a kill between moving the plain directory to generation 0 and linking it
    (path / COLL).unlink()
    store = EdgeStore(path, COLL)
    assert snapshot(store) == expected
    assert live_gen(path) == f"{COLL}@0"
    # a second store on the same path fails at once, before touching anything
    other = EdgeStore(path, COLL)
    with pytest.raises(RuntimeError, match="open in another process"):
        other.count()
    assert snapshot(store) == expected
    store.close()


# -- lifecycle: close during an optimize, the background optimizer of `freshrag up` ----------


def test_close_during_an_online_optimize_aborts_it(tmp_path: Path, small: Path) -> None:
    store = copy_of(small, tmp_path / "a")
    ref = copy_of(small, tmp_path / "ref")
    both = Target(store, ref)
    closer: list[threading.Thread] = []

    def hook(step: str) -> None:
        if step == "optimizer-started":
            writes(both, "pending", SMALL_DOCS)
            closer.append(threading.Thread(target=store.close))
            closer[0].start()  # like `freshrag up` stopping mid-optimize

    store.step_hook = hook
    with pytest.raises(OptimizeError, match="aborted"):
        store.optimize_online(indexing_threshold_kb=THRESHOLD_KB)
    closer[0].join(60)
    assert not closer[0].is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        store.count()
    assert entries(tmp_path / "a") == {COLL, f"{COLL}@0", f"{COLL}.lock"}
    reopened = EdgeStore(tmp_path / "a", COLL)
    try:
        assert snapshot(reopened) == snapshot(ref)
    finally:
        reopened.close()
        ref.close()


def test_auto_optimizer_runs_once_enough_points_are_unindexed(tmp_path: Path, small: Path) -> None:
    store = copy_of(small, tmp_path / "u")
    auto = EdgeAutoOptimizer(store, 3 * SMALL_DOCS, interval_s=0.05, indexing_threshold_kb=1)
    try:
        assert store.unindexed_points() == 2 * SMALL_DOCS
        assert auto.run_once() is None  # below the threshold: nothing runs
        store.upsert_chunks([chunk("t1", f"more-{i}", 1, 0, 1) for i in range(SMALL_DOCS)])
        assert auto.due()
        ran = threading.Event()
        store.step_hook = lambda step: ran.set() if step == "swapped" else None
        auto.start()
        assert ran.wait(300)
        auto.stop()
        assert len(auto.runs) == 1 and auto.runs[0].swapped
        assert store.unindexed_points() == 0 and not auto.due()
        assert store.count() == 3 * SMALL_DOCS
    finally:
        auto.stop()
        store.close()
