"""Builds the ingest process's adapters (store, embedder, metrics) and runs the flow."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from freshrag.core.embedder import Embedder
from freshrag.core.settings import Settings
from freshrag.core.sparse import Bm25Encoder
from freshrag.ingest.cluster import PEER_LOST_EXIT, PeerWatch
from freshrag.ingest.flow import FlowParts, build_flow
from freshrag.ingest.kafka_io import ensure_event_topics
from freshrag.ingest.metrics import IngestMetrics
from freshrag.ingest.searchable import freshness_channel
from freshrag.retrieve.contract import DENSE_DIM, Store
from freshrag.retrieve.generations import IndexSettingsMismatch, manifest_for
from freshrag.retrieve.stores import open_writer_store

log = logging.getLogger("freshrag.ingest")


@dataclass(frozen=True)
class IngestOptions:
    """bytewax's own flags, passed through."""

    workers: int = 1
    process_id: int | None = None
    addresses: list[str] | None = None
    recovery_dir: Path | None = Path(".run/recovery")
    snapshot_interval: timedelta = timedelta(seconds=5)
    recovery_partitions: int = 1
    topic_partitions: int = 4


class IngestConfigError(ValueError):
    pass


class IngestAborted(RuntimeError):
    """The flow failed (logged already). The process must exit with `exit_code` at once: a
    thread stuck on the failed dependency must not hold the exit (a stall, for a supervisor)."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"ingest aborted (exit code {exit_code})")
        self.exit_code = exit_code


def recovery_for(opts: IngestOptions, settings: Settings, generation: str) -> IngestOptions:
    """Each generation resumes from its own snapshots: `<dir>@<generation>` for a re-indexed
    one (the first generation keeps the configured directory, as before generations)."""
    if opts.recovery_dir is None or generation == settings.collection:
        return opts
    directory = opts.recovery_dir
    return replace(opts, recovery_dir=directory.with_name(f"{directory.name}@{generation}"))


def open_index_writer(
    settings: Settings, embedder: Any, opts: IngestOptions, generation: str | None = None
) -> tuple[Store, IngestOptions, str]:
    """The store this process writes (the generation its build settings match), and options
    with that generation's recovery directory; IngestConfigError on a settings mismatch."""
    dimension = getattr(embedder, "dimension", DENSE_DIM)
    manifest = manifest_for(settings, int(dimension))
    try:
        store, name = open_writer_store(settings, manifest, generation)
    except IndexSettingsMismatch as exc:
        raise IngestConfigError(str(exc)) from None
    return store, recovery_for(opts, settings, name), name


def check_options(settings: Settings, opts: IngestOptions) -> None:
    multi_process = bool(opts.addresses and len(opts.addresses) > 1)
    if multi_process and not settings.qdrant_url:
        raise IngestConfigError(
            "a multi-process bytewax cluster needs Qdrant server: set FRESHRAG_QDRANT_URL "
            "(an embedded Qdrant Edge shard belongs to one process)"
        )
    if opts.workers < 1:
        raise IngestConfigError("--workers must be at least 1")


def prepare_recovery(opts: IngestOptions) -> object | None:
    """Initialise the recovery partitions once; later runs resume from their snapshots.

    Initialisation is crash-safe: the partitions are built in a scratch folder and moved in only
    when complete, and partitions a killed initialisation left half-written (no bytewax tables,
    so no state) are rebuilt. Otherwise a kill at that moment would fail every later start
    ("No recovery partitions found")."""
    if opts.recovery_dir is None:
        return None
    from bytewax.recovery import RecoveryConfig, init_db_dir

    target = opts.recovery_dir
    target.mkdir(parents=True, exist_ok=True)
    if opts.process_id and opts.addresses and len(opts.addresses) > 1:
        _wait_for_recovery(target, opts.recovery_partitions)  # process 0 initialises it
        return RecoveryConfig(target)
    existing = sorted(target.glob("*.sqlite3"))
    if existing and not all(_is_recovery_partition(f) for f in existing):
        log.warning("recovery partitions in %s are half-initialised: rebuilding them", target)
        for f in existing:
            f.unlink()
        existing = []
    if not existing:
        scratch = target / f".init-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        init_db_dir(scratch, opts.recovery_partitions)
        for f in sorted(scratch.glob("*.sqlite3")):
            os.replace(f, target / f.name)
        shutil.rmtree(scratch, ignore_errors=True)
    return RecoveryConfig(target)


def _wait_for_recovery(target: Path, partitions: int, timeout_s: float = 300.0) -> None:
    """The other processes of a cluster share process 0's recovery directory: wait for it
    to finish initialising it rather than racing it."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = sorted(target.glob("*.sqlite3"))
        if len(found) >= partitions and all(_is_recovery_partition(f) for f in found):
            return
        if time.monotonic() > deadline:
            raise IngestConfigError(
                f"recovery directory {target} holds no complete bytewax partitions after "
                f"{timeout_s:.0f} s: process 0 initialises it, and every process of the "
                "cluster must see the same directory"
            )
        time.sleep(0.5)


def _is_recovery_partition(path: Path) -> bool:
    """A bytewax recovery partition: an SQLite file with its `parts` table filled in."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return bool(db.execute("SELECT count(*) FROM parts").fetchone()[0])
    except sqlite3.Error:
        return False


class FlowThread:
    """The bytewax dataflow in a background thread; a stop event ends it cleanly."""

    def __init__(self, flow: Any, opts: IngestOptions, stop: threading.Event) -> None:
        self.flow = flow
        self.opts = opts
        self.stop_event = stop
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="freshrag-flow", daemon=True)

    def _run(self) -> None:
        from bytewax.run import cli_main

        try:
            cli_main(
                self.flow,
                workers_per_process=self.opts.workers,
                epoch_interval=self.opts.snapshot_interval,
                recovery_config=prepare_recovery(self.opts),
            )
        except BaseException as exc:
            self.error = exc
            log.exception("the ingest dataflow failed")

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def stop(self, timeout: float = 60) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.error("the dataflow did not stop within %ss", timeout)


class WatermarkPublisher:
    """Publishes the flow's indexed watermarks to the store, so separate API processes can
    serve read-your-writes (`consistency_token`)."""

    def __init__(self, store: Store, topic: str, snapshot: Callable[[], dict[str, int]]) -> None:
        self._store = store
        self._topic = topic
        self._snapshot = snapshot
        self._stop = threading.Event()
        self._last: dict[str, int] | None = None
        self._thread = threading.Thread(target=self._run, name="watermarks", daemon=True)

    def _publish(self) -> None:
        current = self._snapshot()
        if current and current != self._last:
            self._store.save_watermarks(self._topic, current)
            self._last = current

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self._publish()
            except Exception:  # the index being briefly unreachable must not end ingest
                log.exception("publishing watermarks failed")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._publish()
        except Exception as exc:  # must not mask why the flow stopped (store down, say)
            log.warning("final watermark publish failed: %s", exc)


def _peer_connection_failed(exc: BaseException) -> bool:
    """timely's send/receive threads panic when a peer process's connection breaks."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return False
        text = str(seen)
        if type(seen).__name__ == "PanicException" and (
            "Send thread" in text or "Recv thread" in text or "connection" in text.lower()
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _causes(exc: BaseException) -> str:
    """Every error in the chain, outermost first: bytewax wraps a step's exception in its own,
    and the cause (e.g. the store's retry budget running out) must reach the log."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 6:
        parts.append(f"{type(seen).__name__}: {str(seen).splitlines()[0] if str(seen) else ''}")
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


def run_ingest(settings: Settings, opts: IngestOptions) -> None:
    """Run `freshrag ingest` until SIGTERM/SIGINT; state and offsets go to recovery snapshots."""
    from bytewax.run import cli_main
    from prometheus_client import start_http_server

    check_options(settings, opts)
    ensure_event_topics(settings, opts.topic_partitions)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received signal %s, stopping after the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    metrics = IngestMetrics()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.api_host, registry=metrics.registry)
    embedder = Embedder.from_settings(settings)
    store, opts, generation = open_index_writer(settings, embedder, opts)
    processes = max(1, len(opts.addresses or []))
    parts = FlowParts(
        settings, store, embedder, Bm25Encoder(), metrics, stop, workers=opts.workers * processes
    )
    publisher = WatermarkPublisher(store, settings.topic, parts.watermarks.snapshot)
    latency = WatermarkPublisher(  # produce → searchable window, for GET /v1/freshness
        store,
        freshness_channel(settings.topic),
        lambda: metrics.searchable.channel_snapshot(time.time(), str(opts.process_id or 0)),
    )
    peers = _peer_watch(settings, opts, store, stop)
    try:
        flow = build_flow(parts)
        recovery = prepare_recovery(opts)
        publisher.start()
        latency.start()
        if peers is not None:
            peers.start()
        log.info(
            "ingest: topic %s -> %s generation %s, %d worker(s), recovery %s",
            settings.topic,
            settings.qdrant_url or settings.index_path,
            generation,
            opts.workers,
            opts.recovery_dir or "off",
        )
        cli_main(
            flow,
            workers_per_process=opts.workers,
            process_id=opts.process_id,
            addresses=opts.addresses,
            epoch_interval=opts.snapshot_interval,
            recovery_config=recovery,
        )
    except BaseException as exc:
        stop.set()  # the background lane and the retry loops stop taking work
        if peers is not None and _peer_connection_failed(exc):
            log.error(
                "ingest cluster broken: a connection to a peer process failed (%s); exiting "
                "with code %d so the supervisor restarts this process",
                _causes(exc),
                PEER_LOST_EXIT,
            )
            raise IngestAborted(PEER_LOST_EXIT) from exc
        log.error("ingest failed: %s", _causes(exc))
        raise IngestAborted(1) from exc
    finally:
        if peers is not None:
            peers.stop()
        publisher.stop()
        latency.stop()
        store.close()
    log.info("ingest stopped cleanly")


def _peer_watch(
    settings: Settings, opts: IngestOptions, store: Store, stop: threading.Event
) -> PeerWatch | None:
    """In a multi-process cluster: heartbeats through the store, and an exit (for the
    supervisor to restart us) when a peer dies, instead of stalling forever (see `cluster`)."""
    if not opts.addresses or len(opts.addresses) < 2:
        return None
    channel = f"{settings.topic}#cluster-peers"

    def lost(reason: str) -> None:
        log.error(
            "ingest cluster broken: %s; exiting with code %d so the supervisor restarts this "
            "process, which resumes from the last snapshot",
            reason,
            PEER_LOST_EXIT,
        )
        logging.shutdown()
        os._exit(PEER_LOST_EXIT)

    return PeerWatch(
        opts.process_id or 0,
        len(opts.addresses),
        save=lambda beat: store.save_watermarks(channel, beat),
        load=lambda: store.load_watermarks(channel),
        on_lost=lost,
        timeout_s=settings.cluster_peer_timeout_s,
        stop=stop,
    )
