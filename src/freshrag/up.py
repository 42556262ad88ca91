"""`freshrag up`: the embedded default. One process runs the ingest dataflow and the API over one
Qdrant Edge shard on local disk, so no Qdrant server is needed. Kafka and the LLM come from
the settings. SIGINT/SIGTERM stop the API, then the flow (which snapshots), then the shard."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from freshrag.core.settings import Settings
from freshrag.ingest.runner import FlowThread, IngestOptions, open_index_writer

log = logging.getLogger("freshrag.up")


def query_embedder(settings: Settings, ingest: Any) -> Any:
    """The embedder behind the API's searches (FRESHRAG_QUERY_MODEL).

    'separate' (default): a second model instance (+90 MB), so a query never waits for the
    ingest's batches; it shares the cores with them instead. 'shared': the ingest's instance,
    where a waiting query goes before the next ingest sub-batch (`FRESHRAG_EMBED_SUB_BATCH_SIZE`)
    but still waits for the running one. `python -m benchmarks.query_during_ingest` measures both.
    """
    if settings.query_model == "shared":
        return ingest
    from freshrag.core.embedder import Embedder

    return Embedder.from_settings(settings)


def edge_auto_optimizer(settings: Settings, store: Any) -> Any | None:
    """The embedded shard's background HNSW build (FRESHRAG_EDGE_OPTIMIZE_MIN_POINTS; 0: off).
    It optimizes a copy in a subprocess and swaps it in; search and ingest go on meanwhile."""
    from freshrag.retrieve.edge_store import EdgeAutoOptimizer, EdgeStore

    if not isinstance(store, EdgeStore) or settings.edge_optimize_min_points <= 0:
        return None
    optimizer = EdgeAutoOptimizer(
        store, settings.edge_optimize_min_points, interval_s=settings.edge_optimize_check_s
    )
    optimizer.start()
    return optimizer


def run_up(settings: Settings, opts: IngestOptions) -> None:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from freshrag.api.app import create_app
    from freshrag.api.services import build_services, published_watermarks
    from freshrag.core.embedder import Embedder
    from freshrag.core.sparse import Bm25Encoder
    from freshrag.ingest.activity import RecentWrites
    from freshrag.ingest.flow import FlowParts, build_flow
    from freshrag.ingest.kafka_io import ensure_event_topics
    from freshrag.ingest.metrics import IngestMetrics

    ensure_event_topics(settings, opts.topic_partitions)
    registry = CollectorRegistry()  # one /metrics for the flow and the API
    metrics = IngestMetrics(registry)
    embedder = Embedder.from_settings(settings)
    store, opts, generation = open_index_writer(settings, embedder, opts)
    recent = RecentWrites()
    stop = threading.Event()
    parts = FlowParts(
        settings,
        store,
        embedder,
        Bm25Encoder(),
        metrics,
        stop,
        listener=recent.record,
        workers=opts.workers,
    )
    flow = FlowThread(build_flow(parts), opts, stop)
    published: dict[int, Callable[[], dict[str, int]]] = {}

    def watermarks() -> dict[str, int]:
        """This flow's own when it writes the serving generation; else what the process
        writing that one (`freshrag reindex`) published."""
        current = services.current().store
        if current is store:
            return parts.watermarks.snapshot()
        reader = published.setdefault(id(current), published_watermarks(current, settings.topic))
        return reader()

    services = build_services(
        settings,
        store=store,
        embedder=query_embedder(settings, embedder),
        watermarks=watermarks,
        recent=recent,
        registry=registry,
        follow=True,
    )
    services.flow_alive = flow.alive
    services.searchable = metrics.searchable  # produce → searchable latency (/v1/freshness)
    if services.serving is not None:

        def switched(name: str) -> None:
            if name != generation:
                log.warning(
                    "readers now use index generation %s; this process still writes %s (its "
                    "settings build that one), so %s lags until freshrag up is restarted with "
                    "the settings of %s (see `freshrag index list`)",
                    name,
                    generation,
                    name,
                    name,
                )

        services.serving.on_switch = switched
    app = create_app(settings, services)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="info")
    )
    # uvicorn handles SIGINT/SIGTERM while it runs, then re-raises the signal to the previous
    # handler: make that one a no-op so the flow and the shard still shut down cleanly below.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: log.info("signal %s: shutting down", signum))
    flow.start()
    optimizer = edge_auto_optimizer(settings, store)
    log.info(
        "freshrag up: API http://%s:%s (docs /docs), topic %s, index %s generation %s",
        settings.api_host,
        settings.api_port,
        settings.topic,
        settings.qdrant_url or settings.index_path,
        generation,
    )
    try:
        server.run()  # handles SIGINT/SIGTERM, returns after a graceful shutdown
    finally:
        flow.stop()
        if optimizer is not None:
            optimizer.stop()  # kills a running optimize; the live shard is complete
        services.close()
        store.close()
        log.info("freshrag up stopped; index and recovery state kept")
