"""Builds the ingest process's adapters (store, embedder, metrics) and runs the flow."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType

from freshrag.core.embedder import Embedder
from freshrag.core.settings import Settings
from freshrag.core.sparse import Bm25Encoder
from freshrag.ingest.flow import FlowParts, build_flow
from freshrag.ingest.kafka_io import ensure_topics
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
    """Initialise the recovery partitions once; later runs resume from their snapshots."""
    if opts.recovery_dir is None:
        return None
    from bytewax.recovery import RecoveryConfig, init_db_dir

    opts.recovery_dir.mkdir(parents=True, exist_ok=True)
    if not any(opts.recovery_dir.glob("*.sqlite3")):
        init_db_dir(opts.recovery_dir, opts.recovery_partitions)
    return RecoveryConfig(opts.recovery_dir)


def open_settings_store(settings: Settings) -> Store:
    store = open_store(
        settings.qdrant_url,
        settings.index_path,
        settings.collection,
        api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
    )
    store.ensure_collection()
    return store


def run_ingest(settings: Settings, opts: IngestOptions) -> None:
    """Run `freshrag ingest` until SIGTERM/SIGINT; state and offsets go to recovery snapshots."""
    from bytewax.run import cli_main
    from prometheus_client import start_http_server

    check_options(settings, opts)
    ensure_topics(
        settings.kafka_bootstrap,
        [(settings.topic, opts.topic_partitions), (settings.dlq_topic, 1)],
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
    embedder = Embedder(
        settings.embedder_model_path,
        device=settings.embed_device,
        batch_size=settings.embed_batch_size,
    )
    store = open_settings_store(settings)
    try:
        flow = build_flow(FlowParts(settings, store, embedder, Bm25Encoder(), metrics, stop))
        recovery = prepare_recovery(opts)
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
    finally:
        store.close()
    log.info("ingest stopped cleanly")
