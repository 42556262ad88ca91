"""The generations of one logical index on each backend: manifests and the serving pointer.

Edge: generation `name` is the shard at `index_path/name`; its manifest is
`index_path/name.manifest.json`; the pointer is `index_path/<collection>.serving`, replaced
atomically (write, fsync, rename). Server: generation `name` is the collection `name`; its manifest
is in the collection's metadata; the pointer is the alias `<collection>_serving`, moved in one
`update_collection_aliases` call (Qdrant applies its operations atomically).

One `freshrag reindex` builds a logical index at a time: it holds the index's build lock (Edge:
an flock on `index_path/<collection>.reindex-lock.json`; server: the collection
`<collection>_reindex_lock`, which the server creates at most once, with the holder and a
heartbeat in its metadata) from before it writes anything until it ends. `lock_verdict` decides
(pure) when a lock found held may be taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from freshrag.core.processes import pid_alive
from freshrag.retrieve.generations import (
    GENERATION_MARK,
    SERVING_SUFFIX,
    Catalog,
    IndexManifest,
)

log = logging.getLogger("freshrag.catalog")
MANIFEST_KEY = "freshrag_manifest"
BUILD_LOCK_KEY = "freshrag_build_lock"
BUILD_LOCK_SUFFIX = "_reindex_lock"  # server: the lock collection next to the serving alias
LOCK_LEASE_S = 60.0  # a holder whose last heartbeat is older than this is taken for dead
LOCK_HEARTBEAT_S = 10.0


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_generation(collection: str, name: str) -> bool:
    if name == collection:
        return True
    prefix = f"{collection}{GENERATION_MARK}"
    return name.startswith(prefix) and name[len(prefix) :].isalnum()


# -- the build lock: one `freshrag reindex` per logical index at a time -----------------------


class BuildLockHeld(RuntimeError):
    """Another live `freshrag reindex` holds the build lock (the message says who)."""


class BuildLockLost(RuntimeError):
    """This run's build lock was taken over (or removed) while it was building."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _epoch(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def this_machine() -> str:
    """The kernel boot and pid namespace of this process: holders with the same value see the
    same pids, so a holder's pid can be checked here. "" where that cannot be told."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds (or wants) the build lock of a logical index."""

    host: str
    pid: int
    recovery_dir: str  # absolute; "" when the run keeps no recovery snapshots
    generation: str
    started_at: float  # seconds since the epoch
    heartbeat_at: float
    token: str  # one per acquisition
    machine: str = ""  # `this_machine()` of the holder

    @classmethod
    def here(cls, generation: str, recovery_dir: Path | None) -> LockHolder:
        now = time.time()
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            recovery_dir=str(recovery_dir.resolve()) if recovery_dir is not None else "",
            generation=generation,
            started_at=now,
            heartbeat_at=now,
            token=uuid.uuid4().hex,
            machine=this_machine(),
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = _iso(self.started_at)
        data["heartbeat_at"] = _iso(self.heartbeat_at)
        return data

    @classmethod
    def from_json(cls, data: Any) -> LockHolder | None:
        """The holder a lock records, or None when the record is missing or unreadable."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                host=str(data["host"]),
                pid=int(data["pid"]),
                recovery_dir=str(data.get("recovery_dir") or ""),
                generation=str(data.get("generation") or "?"),
                started_at=_epoch(data["started_at"]),
                heartbeat_at=_epoch(data["heartbeat_at"]),
                token=str(data["token"]),
                machine=str(data.get("machine") or ""),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def describe(self, now: float, *, heartbeat: bool = True) -> str:
        text = f"pid {self.pid} on {self.host}, building {self.generation}, started " + _iso(
            self.started_at
        )
        if heartbeat:
            text += f", last heartbeat {max(0, round(now - self.heartbeat_at))} s ago"
        return text


@dataclass(frozen=True, slots=True)
class LockVerdict:
    take: bool
    reason: str  # why it is taken over (logged), or why not (the error)
    warn: bool = False  # a takeover from a holder that may not be dead: log a warning


def lock_verdict(
    mine: LockHolder,
    theirs: LockHolder | None,
    *,
    now: float,
    lease_s: float,
    holder_alive: bool | None,
    break_lock: bool = False,
    where: str = "this index",
) -> LockVerdict:
    """Whether `mine` may take a build lock that `theirs` holds (pure).

    `holder_alive` is whether the holder's process runs, when this process can tell (same
    kernel and pid namespace: `this_machine()`), else None. Taken over: a lock without a
    readable holder; our own; with `break_lock`; a holder whose heartbeat is older than the
    lease; on the same machine, a holder whose process is gone (a crashed run, resumed at
    once); on another machine of the same host name, the same recovery directory (the same
    job, restarted: a new container, say). Refused: anything else."""
    if theirs is None:
        return LockVerdict(True, f"the build lock of {where} names no holder; taking it", True)
    if theirs.token == mine.token:
        return LockVerdict(True, "this run holds the build lock already")
    who = theirs.describe(now)
    if break_lock:
        return LockVerdict(True, f"--break-lock: taking the build lock of {where} from {who}", True)
    age = now - theirs.heartbeat_at
    if age > lease_s:
        return LockVerdict(
            True,
            f"the holder of the build lock of {where} looks dead (no heartbeat for "
            f"{age:.0f} s, lease {lease_s:.0f} s): taking it over from {who}",
            True,
        )
    same_machine = bool(mine.machine) and theirs.machine == mine.machine
    if same_machine and holder_alive is False:
        return LockVerdict(
            True, f"the holder of the build lock of {where} has exited: taking it from {who}"
        )
    if (
        not same_machine
        and theirs.host == mine.host
        and theirs.recovery_dir
        and theirs.recovery_dir == mine.recovery_dir
    ):
        return LockVerdict(
            True, f"the same job (host and recovery directory) resumes the build of {where}"
        )
    return LockVerdict(
        False,
        f"another `freshrag reindex` is building {where}: {who}; run again when it has "
        f"finished, or with --break-lock if you know it is dead (a holder without a heartbeat "
        f"for {lease_s:.0f} s is taken over without it)",
    )


_HELD_HERE: set[str] = set()  # tokens of the build locks this process holds now
_HELD_GUARD = threading.Lock()


def holder_alive(holder: LockHolder) -> bool | None:
    """Whether the holder's process runs, when this process can tell (else None)."""
    if not holder.machine or holder.machine != this_machine():
        return None
    if holder.pid == os.getpid():  # this process: alive only if it holds that lock now
        with _HELD_GUARD:
            return holder.token in _HELD_HERE
    return pid_alive(holder.pid)


class BuildLock(Protocol):
    """Held by `freshrag reindex` from before it writes anything until it ends."""

    def acquire(self, *, break_lock: bool = False) -> None:
        """Take the lock (BuildLockHeld: another live run holds it)."""

    def check(self, *, fresh: bool = False) -> None:
        """BuildLockLost when the lock is no longer this run's (`fresh`: read it again now)."""

    def release(self) -> None: ...


class EdgeCatalog:
    """Generations of an embedded index: shard directories under one folder."""

    def __init__(self, index_path: Path, collection: str) -> None:
        self.path = Path(index_path)
        self.collection = collection

    @property
    def pointer(self) -> Path:
        return self.path / f"{self.collection}.serving"

    def _manifest_file(self, name: str) -> Path:
        return self.path / f"{name}.manifest.json"

    def exists(self, name: str) -> bool:
        shard = self.path / name
        return shard.is_symlink() or shard.exists()

    def generations(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(
            e.name
            for e in self.path.iterdir()
            if _is_generation(self.collection, e.name) and (e.is_symlink() or e.is_dir())
        )

    def read_manifest(self, name: str) -> IndexManifest | None:
        try:
            data = json.loads(self._manifest_file(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return IndexManifest.from_json(data)

    def write_manifest(self, name: str, manifest: IndexManifest) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomically(self._manifest_file(name), manifest.to_json())

    def serving(self) -> str:
        try:
            data = json.loads(self.pointer.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self.collection
        name = data.get("generation") if isinstance(data, dict) else None
        if not isinstance(name, str) or not _is_generation(self.collection, name):
            raise ValueError(f"{self.pointer} does not name a generation of {self.collection!r}")
        return name

    def switch(self, name: str) -> None:
        if not _is_generation(self.collection, name) or not self.exists(name):
            raise ValueError(f"no generation {name!r} of {self.collection!r} in {self.path}")
        _write_atomically(self.pointer, {"generation": name})

    def build_lock(self, holder: LockHolder) -> EdgeBuildLock:
        """The build lock of this index: a file lock, which the kernel releases when its
        process exits (a crashed run never leaves it behind)."""
        where = f"index {self.collection!r} in {self.path}"
        return EdgeBuildLock(self.path / f"{self.collection}.reindex-lock.json", holder, where)

    def close(self) -> None:
        pass


class ServerCatalog:
    """Generations on a Qdrant server: collections, and an alias that readers follow."""

    def __init__(self, client: Any, collection: str, *, owns_client: bool = False) -> None:
        self.client = client
        self.collection = collection
        self.alias = f"{collection}{SERVING_SUFFIX}"
        self._owns = owns_client

    @classmethod
    def from_url(cls, url: str, api_key: str | None, collection: str) -> ServerCatalog:
        from qdrant_client import QdrantClient

        client = QdrantClient(url=url, api_key=api_key, check_compatibility=False)
        return cls(client, collection, owns_client=True)

    def exists(self, name: str) -> bool:
        return bool(self.client.collection_exists(name))

    def generations(self) -> list[str]:
        names = [c.name for c in self.client.get_collections().collections]
        return sorted(n for n in names if _is_generation(self.collection, n))

    def read_manifest(self, name: str) -> IndexManifest | None:
        if not self.client.collection_exists(name):  # a first start: nothing built it yet
            return None
        metadata = self.client.get_collection(name).config.metadata or {}
        data = metadata.get(MANIFEST_KEY)
        return IndexManifest.from_json(data) if isinstance(data, dict) else None

    def write_manifest(self, name: str, manifest: IndexManifest) -> None:
        self.client.update_collection(name, metadata={MANIFEST_KEY: manifest.to_json()})

    def _alias_target(self) -> str | None:
        for alias in self.client.get_aliases().aliases:
            if alias.alias_name == self.alias:
                return str(alias.collection_name)
        return None

    def serving(self) -> str:
        return self._alias_target() or self.collection

    def switch(self, name: str) -> None:
        from qdrant_client import models

        if not _is_generation(self.collection, name) or not self.exists(name):
            raise ValueError(f"no generation {name!r} of {self.collection!r} on the server")
        ops: list[Any] = []
        if self._alias_target() is not None:
            ops.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias))
            )
        ops.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=name, alias_name=self.alias)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def build_lock(
        self,
        holder: LockHolder,
        *,
        lease_s: float = LOCK_LEASE_S,
        heartbeat_s: float = LOCK_HEARTBEAT_S,
    ) -> ServerBuildLock:
        """The build lock of this index: the collection `<collection>_reindex_lock`, whose
        creation (atomic on the server) takes it; its metadata names the holder."""
        return ServerBuildLock(
            self.client,
            f"{self.collection}{BUILD_LOCK_SUFFIX}",
            holder,
            f"index {self.collection!r}",
            lease_s=lease_s,
            heartbeat_s=heartbeat_s,
        )

    def close(self) -> None:
        if self._owns:
            self.client.close()


def build_lock(catalog: Catalog, holder: LockHolder) -> BuildLock:
    """The build lock of `catalog`'s logical index, for a run described by `holder`."""
    if isinstance(catalog, ServerCatalog | EdgeCatalog):
        return catalog.build_lock(holder)
    raise TypeError(f"no build lock for a {type(catalog).__name__}")


class EdgeBuildLock:
    """`flock` on a file next to the shards; the file names the holder for a refused run."""

    def __init__(self, path: Path, holder: LockHolder, where: str) -> None:
        self.path = path
        self.holder = holder
        self.where = where
        self._file: IO[str] | None = None

    def acquire(self, *, break_lock: bool = False) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            text = f.read()
            f.close()
            theirs = None
            with contextlib.suppress(ValueError):
                theirs = LockHolder.from_json(json.loads(text))
            who = theirs.describe(time.time(), heartbeat=False) if theirs else "a running process"
            extra = " (--break-lock cannot take it: its process holds it)" if break_lock else ""
            raise BuildLockHeld(
                f"another `freshrag reindex` is building {self.where}: {who}; run again when it "
                f"has finished: the lock is freed when its process exits{extra}"
            ) from None
        f.seek(0)
        f.truncate()
        json.dump(self.holder.to_json(), f, sort_keys=True)
        f.flush()
        self._file = f

    def check(self, *, fresh: bool = False) -> None:
        pass  # a file lock cannot be taken from a live process

    def release(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.truncate(0)
            f.close()  # releases the flock


class ServerBuildLock:
    """The collection `name` exists while a run holds the lock; its metadata names the holder
    and a heartbeat thread renews `heartbeat_at`. A run that finds it decides with
    `lock_verdict`; a takeover rewrites the metadata, then reads it back after `settle_s` (two
    runs taking over the same dead holder: the one whose record stays wins, the other looks
    again). The heartbeat also notices a takeover of this run's lock (`check`)."""

    def __init__(
        self,
        client: Any,
        name: str,
        holder: LockHolder,
        where: str,
        *,
        lease_s: float = LOCK_LEASE_S,
        heartbeat_s: float = LOCK_HEARTBEAT_S,
        settle_s: float = 1.0,
        attempts: int = 5,
    ) -> None:
        self.client = client
        self.name = name
        self.holder = holder
        self.where = where
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.settle_s = settle_s
        self.attempts = attempts
        self.lost: str | None = None
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> tuple[bool, LockHolder | None]:
        """(whether the lock collection exists, the holder it names)."""
        try:
            info = self.client.get_collection(self.name)
        except Exception:
            if not self.client.collection_exists(self.name):
                return False, None
            raise
        metadata = info.config.metadata or {}
        return True, LockHolder.from_json(metadata.get(BUILD_LOCK_KEY))

    def _write(self) -> None:
        self.client.update_collection(self.name, metadata={BUILD_LOCK_KEY: self.holder.to_json()})

    def _create(self) -> bool:
        """Create the lock collection naming this run; False when it exists already."""
        from qdrant_client import models

        try:
            self.client.create_collection(
                self.name,
                vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT),
                shard_number=1,
                replication_factor=1,
                metadata={BUILD_LOCK_KEY: self.holder.to_json()},
            )
        except Exception:
            if self.client.collection_exists(self.name):
                return False
            raise
        return True

    def acquire(self, *, break_lock: bool = False) -> None:
        with _HELD_GUARD:  # from now on, this process counts as alive for its record
            _HELD_HERE.add(self.holder.token)
        try:
            self._acquire(break_lock)
        except BaseException:
            with _HELD_GUARD:
                _HELD_HERE.discard(self.holder.token)
            raise

    def _acquire(self, break_lock: bool) -> None:
        for _ in range(self.attempts):
            self.holder = replace(self.holder, heartbeat_at=time.time())
            if self._create():
                self._start()
                return
            exists, theirs = self._read()
            if not exists:
                continue  # released in between: create it again
            verdict = lock_verdict(
                self.holder,
                theirs,
                now=time.time(),
                lease_s=self.lease_s,
                holder_alive=holder_alive(theirs) if theirs is not None else None,
                break_lock=break_lock,
                where=self.where,
            )
            if not verdict.take:
                raise BuildLockHeld(verdict.reason)
            try:
                self._write()
            except Exception:
                if not self.client.collection_exists(self.name):
                    continue
                raise
            time.sleep(self.settle_s)
            exists, now_holder = self._read()
            if exists and now_holder is not None and now_holder.token == self.holder.token:
                (log.warning if verdict.warn else log.info)("re-index: %s", verdict.reason)
                self._start()
                return
        raise BuildLockHeld(
            f"could not take the build lock of {self.where}: other runs keep taking it"
        )

    def _start(self) -> None:
        self._held = True
        self._thread = threading.Thread(
            target=self._heartbeat, name="freshrag-build-lock", daemon=True
        )
        self._thread.start()

    def _mine(self) -> bool:
        exists, theirs = self._read()
        if exists and theirs is not None and theirs.token == self.holder.token:
            return True
        taker = f"taken over by {theirs.describe(time.time())}" if theirs else "removed"
        self.lost = f"the build lock of {self.where} was {taker}; this run stops"
        return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self._mine():
                    log.error("re-index: %s", self.lost)
                    return
                self.holder = replace(self.holder, heartbeat_at=time.time())
                self._write()
            except Exception as exc:  # the server away for a moment: try again next beat
                log.warning("re-index: build lock heartbeat failed (%s)", exc)

    def check(self, *, fresh: bool = False) -> None:
        """BuildLockLost once the heartbeat saw the lock taken; `fresh` reads it now."""
        if self.lost is None and fresh and self._held:
            self._mine()
        if self.lost is not None:
            raise BuildLockLost(self.lost)

    def release(self) -> None:
        """Stop the heartbeat; remove the lock collection if it still names this run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)  # at most one request in flight
        with _HELD_GUARD:
            _HELD_HERE.discard(self.holder.token)
        if not self._held or self.lost is not None:
            return
        self._held = False
        try:
            if self._mine():
                self.client.delete_collection(self.name)
        except Exception as exc:
            log.warning(
                "re-index: could not remove the build lock %s (%s); the next run takes it over "
                "when its heartbeat is %.0f s old",
                self.name,
                exc,
                self.lease_s,
            )
