"""The build lock of `freshrag reindex` on a real Qdrant server (and on Edge): while a live run
holds it, another run exits with code 2, names the holder and writes nothing; a holder without
a heartbeat for the lease, a crashed run of this machine, the same job restarted and
`--break-lock` are taken over; a finished run leaves no lock behind; of runs racing for it,
one wins."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from qdrant_client import QdrantClient, models

from freshrag.core.settings import Settings, load_settings
from freshrag.ingest.kafka_io import ensure_event_topics
from freshrag.ingest.runner import IngestOptions, recovery_for
from freshrag.retrieve.catalog import (
    BUILD_LOCK_KEY,
    BUILD_LOCK_SUFFIX,
    BuildLockHeld,
    BuildLockLost,
    EdgeCatalog,
    LockHolder,
    ServerBuildLock,
    ServerCatalog,
    this_machine,
)
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.generations import generation_name, manifest_for
from tests.conftest import ROOT
from tests.integration.harness import event, produce, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

DOCS = 3


@pytest.fixture(scope="module")
def topic(kafka_bootstrap: str) -> str:
    """A compacted documents topic with a few small documents, shared by the tests."""
    name = f"lock-{uuid.uuid4().hex[:10]}"
    settings = load_settings(kafka_bootstrap=kafka_bootstrap, topic=name, dlq_topic=f"{name}.dlq")
    ensure_event_topics(settings, 1)
    produce(
        kafka_bootstrap,
        name,
        [
            event(op="upsert", id=f"d{i}", version=1, title=f"Doc {i}", text=f"Pump {i} manual.")
            for i in range(DOCS)
        ],
    )
    return name


@dataclass
class Index:
    """One logical index on the shared server, and how `freshrag reindex` is run on it."""

    env: dict[str, str]
    settings: Settings
    client: QdrantClient
    catalog: ServerCatalog
    recovery: Path

    @property
    def lock_name(self) -> str:
        return f"{self.settings.collection}{BUILD_LOCK_SUFFIX}"

    @property
    def target(self) -> str:
        return generation_name(self.settings.collection, manifest_for(self.settings, 384))

    @property
    def target_recovery(self) -> str:
        opts = IngestOptions(recovery_dir=self.recovery)
        directory = recovery_for(opts, self.settings, self.target).recovery_dir
        assert directory is not None
        return str(directory.resolve())

    def reindex(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "freshrag.cli", "reindex", "-r", str(self.recovery), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, log: Path) -> subprocess.Popen[bytes]:
        with log.open("w") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "freshrag.cli", "reindex", "-r", str(self.recovery)],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def holder(self) -> LockHolder | None:
        """The holder the lock collection names (None: no lock collection)."""
        if not self.client.collection_exists(self.lock_name):
            return None
        metadata = self.client.get_collection(self.lock_name).config.metadata or {}
        return LockHolder.from_json(metadata.get(BUILD_LOCK_KEY))

    def plant(self, holder: LockHolder) -> None:
        """A lock record as another (perhaps long dead) run left it."""
        self.client.create_collection(
            self.lock_name,
            vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT),
            metadata={BUILD_LOCK_KEY: holder.to_json()},
        )

    def points(self) -> int:
        return int(self.client.count(self.target, exact=True).count)


def base_env(kafka_bootstrap: str, topic: str, tmp_path: Path) -> dict[str, str]:
    return {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("FRESHRAG_") and k not in ("QDRANT_URL", "QDRANT_API_KEY")
        },
        "FRESHRAG_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHRAG_TOPIC": topic,
        "FRESHRAG_DLQ_TOPIC": f"{topic}.dlq",
        "FRESHRAG_INDEX_PATH": str(tmp_path / "index"),
        "FRESHRAG_METRICS_PORT": "0",
    }


@pytest.fixture
def index(
    qdrant_server: tuple[str, str | None], kafka_bootstrap: str, topic: str, tmp_path: Path
) -> Iterator[Index]:
    url, key = qdrant_server
    collection = f"lock{uuid.uuid4().hex[:8]}"
    env = {
        **base_env(kafka_bootstrap, topic, tmp_path),
        "FRESHRAG_QDRANT_URL": url,
        "FRESHRAG_COLLECTION": collection,
    }
    if key:
        env["FRESHRAG_QDRANT_API_KEY"] = key
    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap, topic=topic, qdrant_url=url, collection=collection
    )
    client = QdrantClient(url=url, api_key=key, check_compatibility=False)
    try:
        yield Index(env, settings, client, ServerCatalog(client, collection), tmp_path / "rec")
    finally:
        for c in client.get_collections().collections:
            if c.name.startswith(collection):
                client.delete_collection(c.name)
        client.close()


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def assert_refused(proc: subprocess.CompletedProcess[str], *parts: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = error_lines(proc)
    assert len(errors) == 1, text[-3000:]
    for part in parts:
        assert part in errors[0], errors[0]


def test_a_live_holder_refuses_a_second_run_which_writes_nothing(index: Index) -> None:
    """Even the same job (same recovery directory) is refused while its process lives: two runs
    would write the same recovery snapshots."""
    held = index.catalog.build_lock(
        replace(
            LockHolder.here(index.target, None),
            recovery_dir=index.target_recovery,
            generation=f"{index.settings.collection}-gother",
        ),
        heartbeat_s=1,
    )
    held.acquire()
    try:
        time.sleep(2.5)  # a few heartbeats
        proc = index.reindex()
        assert_refused(
            proc,
            f"pid {os.getpid()} on {socket.gethostname()}",
            f"building {index.settings.collection}-gother",
            "last heartbeat ",
            "--break-lock",
        )
        assert index.catalog.generations() == []  # no generation was created
        assert index.catalog.serving() == index.settings.collection  # no alias either
        holder = index.holder()
        assert holder is not None and holder.token == held.holder.token
        assert time.time() - holder.heartbeat_at < 10  # the heartbeat ran
        held.check(fresh=True)
    finally:
        held.release()
    assert not index.client.collection_exists(index.lock_name)


def test_a_stale_lock_is_taken_over_and_a_finished_run_leaves_no_lock(index: Index) -> None:
    dead = replace(
        LockHolder.here(index.target, Path("/elsewhere/recovery")),
        host="build-host-7",
        pid=4242,
        machine="another-machine",
        heartbeat_at=time.time() - 120,
    )
    index.plant(dead)
    proc = index.reindex()
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "looks dead" in text and "pid 4242 on build-host-7" in text, text[-3000:]
    assert f"serving: {index.target}" in text
    assert index.catalog.serving() == index.target and index.points() >= DOCS
    assert not index.client.collection_exists(index.lock_name)


def test_a_lock_with_a_fresh_heartbeat_elsewhere_is_not_taken(index: Index) -> None:
    index.plant(
        replace(
            LockHolder.here(index.target, Path("/elsewhere/recovery")),
            host="build-host-7",
            pid=4242,
            machine="another-machine",
        )
    )
    assert_refused(index.reindex(), "pid 4242 on build-host-7", "--break-lock")
    assert index.catalog.generations() == []


def test_a_killed_run_is_resumed_at_once_by_the_next_one(index: Index, tmp_path: Path) -> None:
    """kill -9 leaves the lock behind; the next run on this machine sees its process is gone
    and takes the lock without waiting for the lease."""
    log = tmp_path / "first.log"
    first = index.popen(log)

    def holding() -> bool:
        assert first.poll() is None, log.read_text()[-3000:]
        holder = index.holder()
        return holder is not None and holder.pid == first.pid

    try:
        wait_for(holding, timeout=120, what="the first run to take the lock")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    left = index.holder()
    assert left is not None and left.pid == first.pid and left.machine == this_machine()
    proc = index.reindex()
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert f"has exited: taking it from pid {first.pid}" in text, text[-3000:]
    assert index.catalog.serving() == index.target and index.points() >= DOCS
    assert not index.client.collection_exists(index.lock_name)


def test_the_same_job_restarted_in_another_container_takes_over(index: Index) -> None:
    """Same host name and recovery directory, pids not comparable (another pid namespace)."""
    index.plant(
        replace(
            LockHolder.here(index.target, None),
            recovery_dir=index.target_recovery,
            pid=1,
            machine="old-container",
        )
    )
    proc = index.reindex()
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "the same job (host and recovery directory) resumes" in text, text[-3000:]
    assert not index.client.collection_exists(index.lock_name)


def test_break_lock_takes_a_live_lock_and_its_holder_notices(index: Index) -> None:
    held = index.catalog.build_lock(LockHolder.here(index.target, None), heartbeat_s=1)
    held.acquire()
    try:
        proc = index.reindex("--break-lock")
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, text[-3000:]
        took = f"--break-lock: taking the build lock of index '{index.settings.collection}' from"
        assert f"{took} pid {os.getpid()}" in text, text[-3000:]
        assert index.catalog.serving() == index.target
        assert not index.client.collection_exists(index.lock_name)
        with pytest.raises(BuildLockLost):
            held.check(fresh=True)
    finally:
        held.release()


def test_of_runs_racing_for_the_lock_one_wins(index: Index) -> None:
    """Creating the lock collection is atomic on the server; taking over the same dead holder
    at once: the record that stays decides, the others see a live holder and give up."""

    def race(break_lock: bool) -> list[ServerBuildLock]:
        locks = [
            index.catalog.build_lock(LockHolder.here(index.target, None), heartbeat_s=3600)
            for _ in range(6)
        ]
        won: list[ServerBuildLock] = []
        refused: list[str] = []
        go = threading.Barrier(len(locks))

        def take(lock: ServerBuildLock) -> None:
            go.wait()
            try:
                lock.acquire(break_lock=break_lock)
                won.append(lock)
            except BuildLockHeld as exc:
                refused.append(str(exc))

        threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(won) == 1 and len(refused) == len(locks) - 1, (won, refused)
        holder = index.holder()
        assert holder is not None and holder.token == won[0].holder.token
        return won

    (first,) = race(break_lock=False)
    first.release()
    assert not index.client.collection_exists(index.lock_name)
    stale = replace(
        LockHolder.here(index.target, None), machine="gone", heartbeat_at=time.time() - 300
    )
    index.plant(stale)
    (second,) = race(break_lock=False)
    second.release()
    assert not index.client.collection_exists(index.lock_name)


def test_edge_a_second_run_ends_with_one_line_and_code_2(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    """Edge: the build lock is a file lock; and a generation shard another process has open
    (the old failure: a traceback) is refused with one line too."""
    env = {**base_env(kafka_bootstrap, topic, tmp_path), "FRESHRAG_COLLECTION": "kb"}
    args = [sys.executable, "-m", "freshrag.cli", "reindex", "-r", str(tmp_path / "rec")]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    index_path = tmp_path / "index"
    held = EdgeCatalog(index_path, "kb").build_lock(LockHolder.here("kb-gother", None))
    held.acquire()
    try:
        assert_refused(run(), f"pid {os.getpid()}", "building kb-gother", "freed when its process")
    finally:
        held.release()
    assert not [p for p in index_path.iterdir() if p.name.startswith("kb-g")]

    settings = load_settings(topic=topic, collection="kb", index_path=index_path)
    target = generation_name("kb", manifest_for(settings, 384))
    shard = EdgeStore(index_path, target)
    shard.ensure_collection()
    try:
        assert_refused(run(), f"cannot open the generation {target}", "open in another process")
    finally:
        shard.close()
