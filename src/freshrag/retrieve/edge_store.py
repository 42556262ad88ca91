"""`Store` on an embedded Qdrant Edge shard: the index runs in-process, no server needed.

One shard per collection. On disk, `path/collection` is a symlink to the live shard directory
`path/collection@<n>` (a plain directory from an older layout is moved to `collection@0` when
opened); `path/collection.lock` is held while the store is open, so a second process fails
at once instead of cleaning up under the first.

The shard allows reads from one thread while another writes; writes take a lock only so that an
online optimize can journal them in order. `optimize_online()` builds the HNSW graph without
stopping search or ingest: it copies the flushed shard to `collection@<n+1>` (writes wait for
the copy, reads go on), optimizes the copy in a subprocess (no GIL held here, killable) while
the live shard keeps serving and every write is journaled, then opens the copy, replays the
journal into it, and commits by replacing the symlink atomically. Readers hold a reference to
the shard they started on; the old shard is closed when the last of them is done. A kill at any
moment leaves the symlink on a shard with every acknowledged write; leftovers are removed at
the next open.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import qdrant_edge as qe

from freshrag.retrieve.contract import (
    DEFAULT_COLLECTION,
    DENSE_DIM,
    DENSE_VECTOR,
    EVERYONE,
    NOBODY,
    PAYLOAD_INDEXES,
    SPARSE_VECTOR,
    ChunkLayout,
    ChunkPoint,
    DocumentStatus,
    Hit,
    SchemaMismatchError,
    SearchFilter,
    SparseVector,
    StoredVectors,
)
from freshrag.retrieve.payloads import (
    LAYOUT_FIELDS,
    hit_order,
    iso_utc,
    layouts_from_payloads,
    status_from_payloads,
    versions_from_payloads,
)

UPSERT_BATCH = 256
SCROLL_PAGE = 512
_EDGE_CONFIG_FILE = "edge_config.json"  # written by the shard; read only to explain a mismatch
GEN_MARK = "@"  # `collection@<n>`: collection names never contain "@" (settings pattern)
VECTOR_KINDS = 2  # dense + sparse: `indexed_vectors_count` counts both per point
REPLAY_TAIL = 8  # journal ops left for the final replay, the one writes wait for
REPLAY_ROUNDS = 10
RETIRE_WAIT_S = 60.0  # the optimizer waits this long for readers of the old shard
ABORT_WAIT_S = 120.0  # close() waits this long for an online optimize to stop

log = logging.getLogger("freshrag.edge")

StepHook = Callable[[str], None]


def _expected_config(indexing_threshold_kb: int | None = None, dense_dim: int = DENSE_DIM) -> Any:
    """The contract's vector layout; also passed to `load` so the engine verifies it."""
    optimizers = (
        None
        if indexing_threshold_kb is None
        else qe.EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb)
    )
    return qe.EdgeConfig(
        vectors={DENSE_VECTOR: qe.EdgeVectorParams(size=dense_dim, distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        optimizers=optimizers,
    )


def _index_schema(kind: str) -> Any:
    """Edge payload index schema for a PAYLOAD_INDEXES kind."""
    if kind == "keyword_tenant":
        return qe.KeywordIndexParams(is_tenant=True)
    simple = {
        "keyword": qe.PayloadSchemaType.Keyword,
        "datetime": qe.PayloadSchemaType.Datetime,
        "integer": qe.PayloadSchemaType.Integer,
    }
    return simple[kind]


def _index_data_type(kind: str) -> Any:
    """The PayloadSchemaType an existing index of `kind` must report."""
    return {
        "keyword_tenant": qe.PayloadSchemaType.Keyword,
        "keyword": qe.PayloadSchemaType.Keyword,
        "datetime": qe.PayloadSchemaType.Datetime,
        "integer": qe.PayloadSchemaType.Integer,
    }[kind]


def _config_problems(collection: str, shard_dir: Path, dense_dim: int = DENSE_DIM) -> list[str]:
    """Readable differences from the contract, from the shard's persisted config (best effort).

    The engine's own check in `EdgeShard.load(path, config)` stays authoritative; this only
    turns its terse error into messages like "dense size 128, expected 384".
    """
    try:
        raw = json.loads((shard_dir / _EDGE_CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return []
    problems: list[str] = []
    vectors = raw.get("vectors") or {}
    dense = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else None
    if not isinstance(dense, dict):
        problems.append(f"collection {collection!r} has no dense vector {DENSE_VECTOR!r}")
    else:
        if dense.get("size") != dense_dim:
            problems.append(
                f"collection {collection!r} has dense size {dense.get('size')}, "
                f"expected {dense_dim}"
            )
        if str(dense.get("distance", "")).lower() != "cosine":
            problems.append(
                f"collection {collection!r} has dense distance {dense.get('distance')}, "
                "expected Cosine"
            )
    sparse = (raw.get("sparse_vectors") or {}).get(SPARSE_VECTOR)
    if not isinstance(sparse, dict):
        problems.append(f"collection {collection!r} has no sparse vector {SPARSE_VECTOR!r}")
    elif str(sparse.get("modifier", "")).lower() != "idf":
        problems.append(
            f"collection {collection!r} sparse vector {SPARSE_VECTOR!r} has modifier "
            f"{sparse.get('modifier')}, expected idf"
        )
    return problems


def _match(key: str, value: Any) -> Any:
    return qe.FieldCondition(key, match=qe.MatchValue(value))


def _match_any(key: str, values: Sequence[Any]) -> Any:
    return qe.FieldCondition(key, match=qe.MatchAny(list(values)))


def _doc_filter(tenant: str, doc_id: str, *extra: Any) -> Any:
    return qe.Filter(must=[_match("tenant", tenant), _match("doc_id", doc_id), *extra])


def build_filter(flt: SearchFilter) -> Any:
    """SearchFilter -> Edge Filter; the tenant condition is always present."""
    must: list[Any] = [_match("tenant", flt.tenant)]
    for key, value in flt.metadata_equals.items():
        must.append(_match(f"metadata.{key}", value))
    for key, values in flt.metadata_any.items():
        must.append(_match_any(f"metadata.{key}", values))
    if flt.updated_after is not None or flt.updated_before is not None:
        must.append(
            qe.FieldCondition(
                "updated_at",
                range=qe.RangeDateTime(
                    gte=iso_utc(flt.updated_after) if flt.updated_after else None,
                    lte=iso_utc(flt.updated_before) if flt.updated_before else None,
                ),
            )
        )
    if flt.doc_ids is not None:
        must.append(_match_any("doc_id", flt.doc_ids))
    if flt.principals is not None:
        must.append(acl_condition(flt.principals))
    return qe.Filter(must=must)


def acl_condition(principals: Sequence[str]) -> Any:
    """Readable by one of `principals` (EVERYONE implied; NOBODY is no caller's), or no `acl`
    (a point written before ACLs)."""
    readable = sorted({EVERYONE, *principals} - {NOBODY})
    return qe.Filter(should=[_match_any("acl", readable), qe.IsEmptyCondition("acl")])


def _fsync_dir(path: Path) -> None:
    """Make renames and new entries in `path` durable (best effort where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (the copied files were written unsynced)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


class OptimizeError(RuntimeError):
    """An online optimize failed or was aborted; the live shard is untouched and complete."""


@dataclass(frozen=True, slots=True)
class OnlineOptimizeResult:
    """What one `optimize_online()` did. Writes waited for `copy_s + swap_s`; reads never."""

    swapped: bool  # False: the copy was already optimal, so nothing was swapped in
    points: int
    unindexed_before: int
    unindexed_after: int
    journaled_ops: int  # writes made during the optimize, replayed into the copy
    replayed_early: int  # of those, replayed while writes went on (the rest waited for writes)
    copy_points: int  # the copy as the optimizer left it: points, and indexed vectors
    copy_indexed_vectors: int  # (2 per point once HNSW covers every dense vector)
    copy_s: float
    optimize_s: float
    replay_s: float
    swap_s: float
    total_s: float


class _Handle:
    """One open shard and the readers using it; closed once retired and no reader is left."""

    __slots__ = ("claimed", "directory", "refs", "remove_dir", "retired", "shard", "waiting")

    def __init__(self, shard: Any, directory: Path) -> None:
        self.shard = shard
        self.directory = directory
        self.refs = 0
        self.retired = False
        self.waiting = False
        self.claimed = False
        self.remove_dir = False


class EdgeStore:
    """Contract store on a local Qdrant Edge shard at `path/collection`."""

    def __init__(
        self, path: Path, collection: str = DEFAULT_COLLECTION, dense_dim: int = DENSE_DIM
    ) -> None:
        self.path = Path(path)
        self.collection = collection
        self.dense_dim = dense_dim
        self.shard_dir = self.path / collection
        self._handle: _Handle | None = None
        self._closed = False
        self._lock = threading.Lock()  # opening and closing
        self._write_lock = threading.Lock()  # one write at a time, so the journal keeps order
        self._refs = threading.Condition()  # the current handle and its readers
        self._journal: list[Any] | None = None  # writes made while an online optimize runs
        self._dir_lock: IO[str] | None = None
        self._optimizing = threading.Lock()  # at most one online optimize
        self._idle = threading.Event()
        self._idle.set()
        self._abort = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self.step_hook: StepHook | None = None  # fault injection: called at each optimize step
        self.optimizer_pid: int | None = None  # the optimizer subprocess while it runs

    # -- lifecycle ---------------------------------------------------------------------------

    def ensure_collection(self) -> None:
        """Create the shard with its payload indexes, or load it and verify the vector layout."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"EdgeStore {self.shard_dir} is closed")
            if self._handle is not None:
                self._ensure_payload_indexes(self._handle.shard, self._write)
                return
            handle = self._open()
            try:
                self._ensure_payload_indexes(handle.shard, handle.shard.update)
            except BaseException:  # don't keep a half-checked shard
                handle.shard.close()
                self._unlock_dir()
                raise
            with self._refs:
                self._handle = handle

    @staticmethod
    def _exists(directory: Path) -> bool:
        segments = directory / "segments"
        return (directory / _EDGE_CONFIG_FILE).exists() or (
            segments.is_dir() and any(segments.iterdir())
        )

    def _gen_dir(self, n: int) -> Path:
        return self.path / f"{self.collection}{GEN_MARK}{n}"

    def _gen_of(self, directory: Path) -> int:
        _, _, suffix = directory.name.rpartition(GEN_MARK)
        return int(suffix) if suffix.isdigit() else 0

    @property
    def _link_tmp(self) -> Path:
        return self.path / f"{self.collection}{GEN_MARK}link"

    def _lock_dir(self) -> None:
        """Hold `collection.lock` while open: the layout is repaired and cleaned only under it."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = open(self.path / f"{self.collection}.lock", "a+")  # noqa: SIM115 (kept open)
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise RuntimeError(
                f"the index {self.shard_dir} is open in another process (or another EdgeStore); "
                "stop it first"
            ) from None
        self._dir_lock = lock

    def _unlock_dir(self) -> None:
        lock, self._dir_lock = self._dir_lock, None
        if lock is not None:
            lock.close()  # releases the flock

    def _recover_layout(self) -> Path | None:
        """Finish or undo what a crash interrupted, drop leftovers; return the live directory.

        States a kill can leave (writes always wait while these steps run, so every complete
        directory holds every acknowledged write):
        - `collection@link` (the next symlink, not yet in place): removed;
        - `collection` missing and `collection@0` present: a kill while moving a plain directory
          into generation 0, moved back;
        - `collection@<n>` not the symlink's target: an optimize copy that never committed, or
          the old generation after one that did; removed.
        """
        _remove(self._link_tmp)
        link = self.shard_dir
        if not link.is_symlink() and not link.exists() and self._gen_dir(0).is_dir():
            os.rename(self._gen_dir(0), link)
            _fsync_dir(self.path)
        live: Path | None = None
        if link.is_symlink():
            live = self.path / os.readlink(link)
            if not live.is_dir():
                raise RuntimeError(f"{link} points to {live}, which does not exist")
        prefix = f"{self.collection}{GEN_MARK}"
        if self.path.is_dir():
            for entry in self.path.iterdir():
                if entry.name.startswith(prefix) and (live is None or entry.name != live.name):
                    log.info("removing leftover %s", entry)
                    _remove(entry)
        return live

    def _link_to(self, target: Path) -> None:
        """Point `collection` at `target` in one atomic rename."""
        tmp = self._link_tmp
        _remove(tmp)
        os.symlink(target.name, tmp)
        os.replace(tmp, self.shard_dir)
        _fsync_dir(self.path)

    def _open(self) -> _Handle:
        self._lock_dir()
        try:
            live = self._recover_layout()
            directory = live if live is not None else self.shard_dir
            if directory.is_dir() and self._exists(directory):
                problems = _config_problems(self.collection, directory, self.dense_dim)
                if problems:
                    raise SchemaMismatchError("; ".join(problems))
            if live is None:  # a plain directory (older layout), or nothing yet
                live = self._gen_dir(0)
                if self.shard_dir.is_dir():
                    os.rename(self.shard_dir, live)
                    _fsync_dir(self.path)
                else:
                    live.mkdir(parents=True)
                self._link_to(live)
            if not self._exists(live):
                return _Handle(
                    qe.EdgeShard.create(str(live), _expected_config(dense_dim=self.dense_dim)), live
                )
            try:
                return _Handle(
                    qe.EdgeShard.load(str(live), _expected_config(dense_dim=self.dense_dim)), live
                )
            except Exception as exc:  # the binding raises a bare Exception
                if "incompatible" in str(exc).lower():
                    raise SchemaMismatchError(
                        f"collection {self.collection!r} at {self.shard_dir} does not match the "
                        f"index contract: {exc}"
                    ) from exc
                raise
        except BaseException:
            self._unlock_dir()
            raise

    def _ensure_payload_indexes(self, shard: Any, write: Callable[[Any], None]) -> None:
        """Check every existing index first, so a mismatch raises before anything is written."""
        existing = shard.info().payload_schema
        problems = [
            f"collection {self.collection!r} indexes {name!r} as "
            f"{existing[name].data_type}, expected {kind}"
            for name, kind in PAYLOAD_INDEXES.items()
            if name in existing and existing[name].data_type != _index_data_type(kind)
        ]
        if problems:
            raise SchemaMismatchError("; ".join(problems))
        for name, kind in PAYLOAD_INDEXES.items():
            if name not in existing:
                write(qe.UpdateOperation.create_field_index(name, _index_schema(kind)))

    # -- the current shard: readers hold a reference, writers the write lock -----------------

    def _acquire(self) -> _Handle:
        while True:
            with self._refs:
                handle = self._handle
                if handle is not None:
                    handle.refs += 1
                    return handle
            self.ensure_collection()  # opens lazily; raises once closed

    def _release(self, handle: _Handle) -> None:
        with self._refs:
            handle.refs -= 1
            if not handle.retired:
                return
            self._refs.notify_all()
            claim = handle.refs == 0 and not handle.waiting and not handle.claimed
            handle.claimed = handle.claimed or claim
        if claim:
            self._dispose(handle)

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        """The current shard, kept open until the block ends even if a swap retires it."""
        handle = self._acquire()
        try:
            yield handle.shard
        finally:
            self._release(handle)

    def _retire(self, handle: _Handle, *, wait_s: float, remove_dir: bool) -> None:
        """Close `handle` once no reader uses it: now, after waiting, or by its last reader."""
        with self._refs:
            handle.retired = True
            handle.remove_dir = remove_dir
            if wait_s > 0 and handle.refs:
                handle.waiting = True
                self._refs.wait_for(lambda: handle.refs == 0, timeout=wait_s)
                handle.waiting = False
            claim = handle.refs == 0 and not handle.claimed
            handle.claimed = handle.claimed or claim
        if claim:
            self._dispose(handle)
        else:
            log.warning("%s still has readers; the last one closes it", handle.directory)

    @staticmethod
    def _dispose(handle: _Handle) -> None:
        try:
            handle.shard.close()
        except Exception:
            log.exception("closing the retired shard %s failed", handle.directory)
        if handle.remove_dir:
            shutil.rmtree(handle.directory, ignore_errors=True)

    def _write(self, op: Any) -> None:
        if self._handle is None:
            self.ensure_collection()
        with self._write_lock:
            handle = self._handle
            if handle is None:
                raise RuntimeError(f"EdgeStore {self.shard_dir} is closed")
            handle.shard.update(op)
            if self._journal is not None:
                self._journal.append(op)

    def _s(self) -> Any:
        """The open shard (opened lazily). Unlike `_reading`, it may be swapped out after an
        online optimize; kept for benchmarks and tools that reach the shard directly."""
        with self._reading() as shard:
            return shard

    def index_info(self) -> dict[str, int]:
        """Segments, points and indexed vectors (dense ones only once an HNSW graph has them)."""
        with self._reading() as shard:
            info = shard.info()
        return {
            "segments": int(info.segments_count),
            "points": int(info.points_count),
            "indexed_vectors": int(info.indexed_vectors_count),
        }

    def unindexed_points(self) -> int:
        """Points whose dense vector no HNSW graph covers yet: what a dense search scans in
        full. Sparse vectors are always indexed, so this is `2 × points − indexed vectors`
        (deleted points not yet vacuumed may make it undercount, never overcount)."""
        info = self.index_info()
        return max(0, VECTOR_KINDS * info["points"] - info["indexed_vectors"])

    def optimize(self) -> bool:
        """Build the HNSW and payload indexes in place. Edge does not do this in the background,
        and until it runs, dense search is a full scan (p99 42 ms at 100k points instead of
        13 ms). The binding holds the GIL throughout, so every thread of this process stops
        (about 20 s at 10k points, minutes at 100k): offline only. Use `optimize_online()`
        while serving."""
        if self._handle is None:
            self.ensure_collection()
        with self._write_lock:
            handle = self._handle
            if handle is None:
                raise RuntimeError(f"EdgeStore {self.shard_dir} is closed")
            return bool(handle.shard.optimize())

    # -- online optimize ---------------------------------------------------------------------

    @property
    def optimizing(self) -> bool:
        return not self._idle.is_set()

    def abort_optimize(self) -> None:
        """Stop a running online optimize (it raises OptimizeError; the live shard stays)."""
        self._abort.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.kill()

    def optimize_online(
        self, *, indexing_threshold_kb: int | None = None, nice: int = 10
    ) -> OnlineOptimizeResult:
        """Build the HNSW graph on a copy while this store keeps serving reads and writes, then
        swap it in. `indexing_threshold_kb` lowers the engine's indexing threshold on the copy
        (tests; by default segments under ~10 MB of vectors stay plain); `nice` lowers the
        optimizer subprocess's CPU priority so searches and ingest go first.

        Raises OptimizeError when the optimizer fails, is killed or aborted, or another online
        optimize runs; the live shard then carries on unchanged.
        """
        if not self._optimizing.acquire(blocking=False):
            raise OptimizeError(f"an online optimize of {self.shard_dir} is already running")
        try:
            self._idle.clear()
            self._abort.clear()
            if self._closed:
                raise OptimizeError(f"EdgeStore {self.shard_dir} is closed")
            return self._optimize_online(indexing_threshold_kb, nice)
        finally:
            self._idle.set()
            self._optimizing.release()

    def _step(self, name: str) -> None:
        hook = self.step_hook
        if hook is not None:
            hook(name)

    def _optimize_online(
        self, indexing_threshold_kb: int | None, nice: int
    ) -> OnlineOptimizeResult:
        started = time.perf_counter()
        unindexed_before = self.unindexed_points()  # also opens the shard
        committed = False
        work: Path | None = None
        try:
            with self._write_lock:  # writes wait for the copy; reads go on
                old = self._handle
                if old is None:
                    raise OptimizeError(f"EdgeStore {self.shard_dir} is closed")
                work = self._gen_dir(self._gen_of(old.directory) + 1)
                old.shard.flush()
                _remove(work)
                try:
                    shutil.copytree(old.directory, work, symlinks=True)
                except OSError as exc:  # shutil.Error too; disk full, most likely
                    raise OptimizeError(f"cannot copy {old.directory} to {work}: {exc}") from exc
                self._journal = []
            copy_s = time.perf_counter() - started
            self._step("copied")
            mark = time.perf_counter()
            outcome = self._run_optimizer(work, indexing_threshold_kb, nice)
            optimize_s = time.perf_counter() - mark
            self._step("optimized")
            if self._abort.is_set():
                raise OptimizeError("online optimize aborted")
            if not outcome.get("optimized", True):
                return OnlineOptimizeResult(
                    swapped=False,
                    points=int(outcome.get("points", 0)),
                    unindexed_before=unindexed_before,
                    unindexed_after=unindexed_before,
                    journaled_ops=len(self._journal or []),
                    replayed_early=0,
                    copy_points=int(outcome.get("points", 0)),
                    copy_indexed_vectors=int(outcome.get("indexed_vectors", 0)),
                    copy_s=copy_s,
                    optimize_s=optimize_s,
                    replay_s=0.0,
                    swap_s=0.0,
                    total_s=time.perf_counter() - started,
                )
            mark = time.perf_counter()
            new = qe.EdgeShard.load(str(work), _expected_config(dense_dim=self.dense_dim))
            try:
                self._step("opened")
                done = self._replay_while_writing(new)
                new.flush()  # most of the flushing, before writes have to wait
                self._step("replayed")
                if self._abort.is_set():
                    raise OptimizeError("online optimize aborted")
                replay_s = time.perf_counter() - mark
                mark = time.perf_counter()
                with self._write_lock:  # writes wait from here to the swap
                    journal = self._journal or []
                    for op in journal[done:]:
                        new.update(op)
                    journaled = len(journal)
                    new.flush()
                    self._step("flushed")
                    _remove(self._link_tmp)
                    os.symlink(work.name, self._link_tmp)
                    self._step("link-made")
                    os.replace(self._link_tmp, self.shard_dir)  # the commit point
                    committed = True
                    try:
                        _fsync_dir(self.path)
                        self._step("linked")
                    finally:  # once committed on disk, this process must serve the copy too
                        with self._refs:
                            self._handle = _Handle(new, work)
                        self._journal = None
                swap_s = time.perf_counter() - mark
            except BaseException:
                if not committed:
                    new.close()
                raise
            finally:
                if committed:
                    self._retire(old, wait_s=RETIRE_WAIT_S, remove_dir=True)
            self._step("swapped")
            info = self.index_info()
            return OnlineOptimizeResult(
                swapped=True,
                points=info["points"],
                unindexed_before=unindexed_before,
                unindexed_after=max(0, VECTOR_KINDS * info["points"] - info["indexed_vectors"]),
                journaled_ops=journaled,
                replayed_early=done,
                copy_points=int(outcome.get("points", 0)),
                copy_indexed_vectors=int(outcome.get("indexed_vectors", 0)),
                copy_s=copy_s,
                optimize_s=optimize_s,
                replay_s=replay_s,
                swap_s=swap_s,
                total_s=time.perf_counter() - started,
            )
        finally:
            with self._write_lock:
                if not committed:
                    self._journal = None
            if not committed and work is not None:
                _remove(work)

    def _replay_while_writing(self, new: Any) -> int:
        """Replay the journal into the copy while writes go on (the journal grows meanwhile),
        until at most REPLAY_TAIL ops are left for the final replay, the one writes wait for."""
        done = 0
        for _ in range(REPLAY_ROUNDS):
            with self._write_lock:
                pending = list((self._journal or [])[done:])
            if len(pending) <= REPLAY_TAIL:
                break
            for op in pending:
                new.update(op)
                time.sleep(0)  # the binding holds the GIL in update(): let searches in
            done += len(pending)
        return done

    def _run_optimizer(
        self, work: Path, indexing_threshold_kb: int | None, nice: int
    ) -> dict[str, Any]:
        """Optimize `work` in a subprocess; returns its JSON summary."""
        with tempfile.TemporaryDirectory(prefix="freshrag-optimize-") as tmp:
            result = Path(tmp) / "result.json"
            cmd = [
                sys.executable, "-m", "freshrag.retrieve.edge_store", "optimize-copy",
                os.path.abspath(work), "--result", str(result), "--nice", str(nice),
                "--parent-pid", str(os.getpid()),
            ]  # fmt: skip
            if indexing_threshold_kb is not None:
                cmd += ["--indexing-threshold-kb", str(indexing_threshold_kb)]
            cmd += ["--dense-dim", str(self.dense_dim)]
            with open(Path(tmp) / "output.log", "w+b") as output:
                child = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=output, stderr=output
                )
                self._child = child
                self.optimizer_pid = child.pid
                try:
                    if self._abort.is_set():
                        child.kill()
                    self._step("optimizer-started")
                    while True:
                        try:
                            code = child.wait(timeout=0.25)
                            break
                        except subprocess.TimeoutExpired:
                            if self._abort.is_set():
                                child.kill()
                finally:
                    if child.poll() is None:
                        child.kill()
                        child.wait()
                    self._child = None
                    self.optimizer_pid = None
                if self._abort.is_set():
                    raise OptimizeError("online optimize aborted")
                if code != 0:
                    output.seek(0)
                    tail = output.read()[-2000:].decode(errors="replace").strip()
                    how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
                    raise OptimizeError(f"the optimizer subprocess {how}: {tail}")
            try:
                outcome: dict[str, Any] = json.loads(result.read_text())
            except (OSError, ValueError) as exc:
                raise OptimizeError(f"the optimizer subprocess left no result: {exc}") from None
        return outcome

    # -- watermarks: a small JSON file beside the shard, replaced atomically -------------------

    def _watermark_file(self, topic: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in topic)
        return self.path / f"{self.collection}.watermarks.{safe}.json"

    def save_watermarks(self, topic: str, watermarks: Mapping[str, int]) -> None:
        """Merged per partition, like the server: a save names only the partitions it owns."""
        target = self._watermark_file(topic)
        target.parent.mkdir(parents=True, exist_ok=True)
        merged = {**self.load_watermarks(topic), **{str(k): int(v) for k, v in watermarks.items()}}
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged))
        os.replace(tmp, target)

    def load_watermarks(self, topic: str) -> dict[str, int]:
        try:
            data = json.loads(self._watermark_file(topic).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()}

    def flush(self) -> None:
        """Persist pending writes (the WAL already makes them durable; this speeds reopening)."""
        with self._write_lock:
            if self._handle is not None:
                self._handle.shard.flush()

    def close(self) -> None:
        """Stop a running online optimize, flush and release the shard; a new EdgeStore on the
        same path sees all data."""
        with self._lock:
            self._closed = True
        if self.optimizing:
            self.abort_optimize()
            if not self._idle.wait(ABORT_WAIT_S):
                log.error("the online optimize of %s did not stop", self.shard_dir)
        with self._lock:
            with self._write_lock, self._refs:
                handle, self._handle = self._handle, None
            if handle is not None:
                try:
                    handle.shard.flush()
                finally:
                    self._retire(handle, wait_s=RETIRE_WAIT_S, remove_dir=False)
            self._unlock_dir()

    # -- writes ------------------------------------------------------------------------------

    def upsert_chunks(self, chunks: Sequence[ChunkPoint]) -> None:
        if not chunks:
            return
        for start in range(0, len(chunks), UPSERT_BATCH):
            points = [
                qe.Point(
                    c.id,
                    {
                        DENSE_VECTOR: [float(x) for x in c.dense],
                        SPARSE_VECTOR: qe.SparseVector(
                            list(c.sparse.indices), [float(v) for v in c.sparse.values]
                        ),
                    },
                    c.payload(),
                )
                for c in chunks[start : start + UPSERT_BATCH]
            ]
            self._write(qe.UpdateOperation.upsert_points(points))

    def delete_versions_below(
        self, tenant: str, doc_id: str, version: int, keep_chunks: int | None = None
    ) -> None:
        stale: list[Any] = [qe.FieldCondition("version", range=qe.RangeFloat(lt=version))]
        if keep_chunks is not None:
            stale.append(
                qe.Filter(
                    must=[
                        _match("version", version),
                        qe.FieldCondition("chunk_index", range=qe.RangeFloat(gte=keep_chunks)),
                    ]
                )
            )
        flt = qe.Filter(must=[_match("tenant", tenant), _match("doc_id", doc_id)], should=stale)
        self._write(qe.UpdateOperation.delete_points_by_filter(flt))

    def delete_document(self, tenant: str, doc_id: str, up_to_version: int | None = None) -> None:
        extra = []
        if up_to_version is not None:
            extra.append(qe.FieldCondition("version", range=qe.RangeFloat(lte=up_to_version)))
        flt = _doc_filter(tenant, doc_id, *extra)
        self._write(qe.UpdateOperation.delete_points_by_filter(flt))

    def patch_document(self, tenant: str, doc_id: str, payload: Mapping[str, Any]) -> None:
        flt = _doc_filter(tenant, doc_id)
        self._write(qe.UpdateOperation.set_payload_by_filter(flt, dict(payload)))

    # -- reads -------------------------------------------------------------------------------

    def chunk_vectors(self, tenant: str, doc_ids: Sequence[str]) -> dict[str, StoredVectors]:
        if not doc_ids:
            return {}
        flt = qe.Filter(must=[_match("tenant", tenant), _match_any("doc_id", list(doc_ids))])
        out: dict[str, StoredVectors] = {}
        offset: Any = None
        with self._reading() as shard:
            while True:
                records, offset = shard.scroll(
                    qe.ScrollRequest(
                        offset=offset,
                        limit=SCROLL_PAGE,
                        filter=flt,
                        with_payload=qe.PayloadSelector.Include(["chunk_hash"]),
                        with_vector=True,
                    )
                )
                for rec in records:
                    digest = (rec.payload or {}).get("chunk_hash")
                    vec = rec.vector or {}
                    if digest and DENSE_VECTOR in vec and SPARSE_VECTOR in vec:
                        sp = vec[SPARSE_VECTOR]
                        out[str(digest)] = (
                            list(vec[DENSE_VECTOR]),
                            SparseVector(list(sp.indices), list(sp.values)),
                        )
                if offset is None:
                    return out

    def _scroll(self, flt: Any, fields: list[str] | None) -> Iterator[dict[str, Any]]:
        """Every matching payload, page by page (`fields=None` means the whole payload)."""
        with_payload: Any = True if fields is None else qe.PayloadSelector.Include(fields)
        offset: Any = None
        with self._reading() as shard:  # every page from the same shard
            while True:
                records, offset = shard.scroll(
                    qe.ScrollRequest(
                        offset=offset,
                        limit=SCROLL_PAGE,
                        filter=flt,
                        with_payload=with_payload,
                        with_vector=False,
                    )
                )
                for rec in records:
                    yield dict(rec.payload or {})
                if offset is None:
                    return

    def document_status(
        self, tenant: str, doc_id: str, principals: Sequence[str] | None = None
    ) -> DocumentStatus | None:
        fields = ["version", "indexed_at", "updated_at"]
        extra = [] if principals is None else [acl_condition(principals)]
        payloads = list(self._scroll(_doc_filter(tenant, doc_id, *extra), fields))
        return status_from_payloads(tenant, doc_id, payloads)

    def document_versions(self, tenant: str, doc_ids: Sequence[str]) -> dict[str, int]:
        if not doc_ids:
            return {}
        flt = qe.Filter(must=[_match("tenant", tenant), _match_any("doc_id", list(doc_ids))])
        return versions_from_payloads(self._scroll(flt, ["doc_id", "version"]))

    def chunk_layouts(
        self, tenant: str | None, doc_ids: Sequence[str]
    ) -> dict[tuple[str, str], list[ChunkLayout]]:
        if not doc_ids:
            return {}
        must = [_match_any("doc_id", list(doc_ids))]
        if tenant is not None:
            must.insert(0, _match("tenant", tenant))
        return layouts_from_payloads(self._scroll(qe.Filter(must=must), LAYOUT_FIELDS))

    def count(self, tenant: str | None = None) -> int:
        flt = qe.Filter(must=[_match("tenant", tenant)]) if tenant is not None else None
        with self._reading() as shard:
            return int(shard.count(qe.CountRequest(exact=True, filter=flt)))

    def _query(self, vector: Any, using: str, flt: SearchFilter, limit: int) -> list[Hit]:
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(vector, using=using),
            filter=build_filter(flt),
            with_payload=True,
            with_vector=False,
        )
        with self._reading() as shard:
            points = shard.query(request)
        hits = [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]
        return sorted(hits, key=hit_order)

    def query_dense(self, vector: Sequence[float], flt: SearchFilter, limit: int) -> list[Hit]:
        return self._query([float(x) for x in vector], DENSE_VECTOR, flt, limit)

    def query_sparse(self, vector: SparseVector, flt: SearchFilter, limit: int) -> list[Hit]:
        if not vector.indices:
            return []
        sparse = qe.SparseVector(list(vector.indices), [float(v) for v in vector.values])
        return self._query(sparse, SPARSE_VECTOR, flt, limit)

    def scroll_payloads(self, tenant: str | None = None) -> list[dict[str, Any]]:
        flt = qe.Filter(must=[_match("tenant", tenant)]) if tenant is not None else None
        return list(self._scroll(flt, None))


class EdgeAutoOptimizer:
    """`freshrag up`: every `interval_s`, start an online optimize in this background thread
    once `min_points` more points than the last optimize left are not covered by HNSW (at most
    one at a time; failures back off up to an hour)."""

    def __init__(
        self,
        store: EdgeStore,
        min_points: int,
        *,
        interval_s: float = 30.0,
        indexing_threshold_kb: int | None = None,
    ) -> None:
        self.store = store
        self.min_points = min_points
        self.interval_s = interval_s
        self.indexing_threshold_kb = indexing_threshold_kb
        self.runs: list[OnlineOptimizeResult] = []
        self._left = 0  # points the last optimize left unindexed (below the engine's threshold)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="freshrag-optimize", daemon=True)

    def due(self) -> bool:
        return self.store.unindexed_points() - self._left >= self.min_points

    def run_once(self) -> OnlineOptimizeResult | None:
        """One check; optimizes online when due. Returns what the optimize did, or None."""
        if not self.due():
            return None
        unindexed = self.store.unindexed_points()
        log.info("%s points not covered by HNSW: optimizing online", unindexed)
        result = self.store.optimize_online(indexing_threshold_kb=self.indexing_threshold_kb)
        self._left = result.unindexed_after
        self.runs.append(result)
        log.info(
            "online optimize done in %.1f s (optimizer %.1f s; writes waited %.2f s for the "
            "copy and %.2f s for the swap; %d writes replayed); %d points left unindexed",
            result.total_s,
            result.optimize_s,
            result.copy_s,
            result.swap_s,
            result.journaled_ops,
            result.unindexed_after,
        )
        return result

    def _loop(self) -> None:
        delay = self.interval_s
        while not self._stop.wait(delay):
            try:
                self.run_once()
                delay = self.interval_s
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("online optimize of %s failed", self.store.shard_dir)
                delay = min(max(delay, self.interval_s) * 2, 3600.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self.store.abort_optimize()
        if self._thread.is_alive():
            self._thread.join(timeout)


def _optimize_copy(
    path: str, indexing_threshold_kb: int | None, dense_dim: int = DENSE_DIM
) -> dict[str, Any]:
    """In the optimizer subprocess: optimize the copy at `path`, flush, fsync, close."""
    shard = qe.EdgeShard.load(path, _expected_config(indexing_threshold_kb, dense_dim))
    try:
        started = time.perf_counter()
        changed = bool(shard.optimize())
        took = time.perf_counter() - started
        info = shard.info()
        shard.flush()
    finally:
        shard.close()
    _fsync_tree(Path(path))
    return {
        "optimized": changed,
        "seconds": took,
        "points": int(info.points_count),
        "indexed_vectors": int(info.indexed_vectors_count),
        "segments": int(info.segments_count),
    }


def _die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGKILL when the thread that started this process dies, so a killed store
    leaves no optimizer writing into a copy that its next open removes."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m freshrag.retrieve.edge_store optimize-copy DIR --result FILE`: the online
    optimize's subprocess (not a user command)."""
    ap = argparse.ArgumentParser(prog="python -m freshrag.retrieve.edge_store")
    ap.add_argument("command", choices=["optimize-copy"])
    ap.add_argument("path")
    ap.add_argument("--result", required=True)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--indexing-threshold-kb", type=int, default=None)
    ap.add_argument("--dense-dim", type=int, default=DENSE_DIM)
    ap.add_argument("--parent-pid", type=int, default=None)
    args = ap.parse_args(argv)
    if args.parent_pid is not None:
        _die_with_parent(args.parent_pid)
    if args.nice:
        with suppress(OSError):
            os.nice(args.nice)
    outcome = _optimize_copy(args.path, args.indexing_threshold_kb, args.dense_dim)
    tmp = f"{args.result}.tmp"
    Path(tmp).write_text(json.dumps(outcome))
    os.replace(tmp, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
