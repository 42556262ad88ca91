"""Builds the ingest process's adapters (store, embedder, metrics) and runs the flow."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType

from freshrag.core.embedder import Embedder
from freshrag.core.settings import Settings
from freshrag.core.sparse import Bm25Encoder
from freshrag.ingest.flow import FlowParts, build_flow
from freshrag.ingest.kafka_io import dlq_topic_config, ensure_topics
from freshrag.ingest.metrics import IngestMetrics
from freshrag.retrieve.contract import Store
from freshrag.retrieve.stores import open_store

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
    existing = sorted(target.glob("*.sqlite3"))
    if existing and not all(_is_recovery_partition(f) for f in existing):
        log.warning("recovery partitions in %s are half-initialised: rebuilding them", target)
        for f in existing:
            f.unlink()
        existing = []
    if not existing:
        scratch = target / ".init"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        init_db_dir(scratch, opts.recovery_partitions)
        for f in sorted(scratch.glob("*.sqlite3")):
            os.replace(f, target / f.name)
        shutil.rmtree(scratch, ignore_errors=True)
    return RecoveryConfig(target)


def _is_recovery_partition(path: Path) -> bool:
    """A bytewax recovery partition: an SQLite file with its `parts` table filled in."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return bool(db.execute("SELECT count(*) FROM parts").fetchone()[0])
    except sqlite3.Error:
        return False


def open_settings_store(settings: Settings) -> Store:
    store = open_store(
        settings.qdrant_url,
        settings.index_path,
        settings.collection,
        api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
    )
    store.ensure_collection()
    return store


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
    ensure_topics(
        settings.kafka_bootstrap,
        [(settings.topic, opts.topic_partitions), (settings.dlq_topic, 1)],
        configs={settings.dlq_topic: dlq_topic_config(settings.dlq_max_message_bytes)},
    )
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
    store = open_settings_store(settings)
    processes = max(1, len(opts.addresses or []))
    parts = FlowParts(
        settings, store, embedder, Bm25Encoder(), metrics, stop, workers=opts.workers * processes
    )
    publisher = WatermarkPublisher(store, settings.topic, parts.watermarks.snapshot)
    try:
        flow = build_flow(parts)
        recovery = prepare_recovery(opts)
        publisher.start()
        log.info(
            "ingest: topic %s -> %s, %d worker(s), recovery %s",
            settings.topic,
            settings.qdrant_url or settings.index_path,
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
        log.error("ingest failed: %s", _causes(exc))
        raise
    finally:
        publisher.stop()
        store.close()
    log.info("ingest stopped cleanly")
