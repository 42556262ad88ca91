"""`freshrag up`: the embedded default. One process runs the ingest dataflow and the API over one
Qdrant Edge shard on local disk, so no Qdrant server is needed. Kafka and the LLM come from
the settings. SIGINT/SIGTERM stop the API, then the flow (which snapshots), then the shard.

The flow writes the generation the API serves: when `freshrag reindex` or `freshrag index
switch` moves the serving pointer, `GenerationWriter` moves the flow too (see its doc)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from freshrag.core.settings import Settings
from freshrag.ingest.runner import FlowThread, IngestOptions, open_index_writer, recovery_for
from freshrag.retrieve.contract import Store
from freshrag.retrieve.generations import differences, manifest_for

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


class GenerationWriter:
    """The ingest flow of `freshrag up`, on the generation its readers use.

    After a switch of the serving pointer nothing else writes the new generation: `freshrag
    reindex` has exited (on Edge the shard belongs to one process, and this one now holds it
    open for its readers). So the flow follows: it drains and stops, then starts again on the
    store the readers opened, with that generation's build settings (its manifest: model,
    chunking) and that generation's recovery snapshots (`<dir>@<generation>`: those `freshrag
    reindex` left with the same `-r`, so it resumes where the build stopped; else it reads the
    topic from the start and skips what the generation holds). A roll-back is the same move.
    The process's own settings still decide what it writes at its next start."""

    def __init__(
        self,
        settings: Settings,
        opts: IngestOptions,
        embedder: Any,
        metrics: Any,
        listener: Callable[[Any], None] | None,
    ) -> None:
        self.base_settings = settings
        self.base_opts = opts
        self.base_embedder = embedder
        self.metrics = metrics
        self.listener = listener
        self.lock = threading.Lock()
        self.flow: FlowThread | None = None
        self.parts: Any = None
        self.store: Store | None = None
        self.generation = ""
        self.home = ""  # the generation this process's own settings build
        self.stopped = False

    def start(self, store: Store, generation: str, settings: Settings, embedder: Any) -> None:
        from freshrag.core.sparse import Bm25Encoder
        from freshrag.ingest.flow import FlowParts, build_flow

        stop = threading.Event()
        parts = FlowParts(
            settings,
            store,
            embedder,
            Bm25Encoder(),
            self.metrics,
            stop,
            listener=self.listener,
            workers=self.base_opts.workers,
        )
        opts = recovery_for(self.base_opts, self.base_settings, generation)
        flow = FlowThread(build_flow(parts), opts, stop)
        self.home = self.home or generation
        self.parts, self.store, self.generation, self.flow = parts, store, generation, flow
        flow.start()

    def follow(self, generation: Any) -> None:
        """Move the flow to `generation` (api.serving.Generation), which readers now use."""
        with self.lock:
            if self.stopped or generation.name == self.generation:
                return
            settings, embedder = self._build_of(generation)
            if settings is None:
                return
            previous = self.generation
            if self.flow is not None:
                self.flow.stop(timeout=self.base_settings.stop_drain_s + 60)
                if self.flow.thread.is_alive():  # never two flows on one recovery store
                    log.error(
                        "the ingest flow of %s did not stop; it is not moved to %s (restart "
                        "freshrag up)",
                        previous,
                        generation.name,
                    )
                    return
            self.start(generation.store, generation.name, settings, embedder)
            log.info(
                "the ingest flow now writes %s, the generation readers use (was %s)",
                generation.name,
                previous,
            )

    def _build_of(self, generation: Any) -> tuple[Settings | None, Any]:
        """The settings and embedder that build `generation` (None: this process cannot)."""
        own = manifest_for(self.base_settings, int(self.base_embedder.dimension))
        manifest = generation.manifest
        if generation.name == self.home or (
            manifest is not None and not differences(manifest, own)
        ):
            return self.base_settings, self.base_embedder
        if manifest is None:
            log.warning(
                "readers now use %s, which records no build settings; this process keeps "
                "writing %s",
                generation.name,
                self.generation,
            )
            return None, None
        settings = self.base_settings.model_copy(update=manifest.settings_update())
        embedder = self.base_embedder
        if manifest.embedder != own.embedder or any(
            manifest.build.get(k) != own.build.get(k) for k in ("model", "precision", "dimension")
        ):
            from freshrag.core.embedder import Embedder

            embedder = Embedder.from_settings(settings)
        mismatch = differences(manifest, manifest_for(settings, int(embedder.dimension)))
        if mismatch:
            log.warning(
                "readers now use %s, but this process cannot build it (%s): it keeps writing %s",
                generation.name,
                "; ".join(mismatch),
                self.generation,
            )
            return None, None
        return settings, embedder

    def watermarks(self) -> dict[str, int]:
        return dict(self.parts.watermarks.snapshot()) if self.parts is not None else {}

    def alive(self) -> bool:
        return self.flow is not None and self.flow.alive()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            if self.flow is not None:
                self.flow.stop()


def run_up(settings: Settings, opts: IngestOptions) -> None:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from freshrag.api.app import create_app
    from freshrag.api.services import build_services, published_watermarks
    from freshrag.core.embedder import Embedder
    from freshrag.ingest.activity import RecentWrites
    from freshrag.ingest.kafka_io import ensure_event_topics
    from freshrag.ingest.metrics import IngestMetrics

    ensure_event_topics(settings, opts.topic_partitions)
    registry = CollectorRegistry()  # one /metrics for the flow and the API
    metrics = IngestMetrics(registry)
    embedder = Embedder.from_settings(settings)
    store, _, generation = open_index_writer(settings, embedder, opts)
    recent = RecentWrites()
    writer = GenerationWriter(settings, opts, embedder, metrics, recent.record)
    published: dict[int, Callable[[], dict[str, int]]] = {}

    def watermarks() -> dict[str, int]:
        """This flow's own when it writes the serving generation; else what the process
        writing that one (`freshrag reindex`) published."""
        current = services.current().store
        if current is writer.store:
            return writer.watermarks()
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
    services.flow_alive = writer.alive
    services.searchable = metrics.searchable  # produce → searchable latency (/v1/freshness)
    serving = services.serving
    app = create_app(settings, services)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="info")
    )
    # uvicorn handles SIGINT/SIGTERM while it runs, then re-raises the signal to the previous
    # handler: make that one a no-op so the flow and the shard still shut down cleanly below.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: log.info("signal %s: shutting down", signum))
    writer.start(store, generation, settings, embedder)
    if serving is not None:  # from now on the flow follows the readers' generation
        serving.on_switch = lambda _name: writer.follow(serving.current())
        writer.follow(serving.current())  # a switch before this line, or a restart after one
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
        writer.stop()
        if optimizer is not None:
            optimizer.stop()  # kills a running optimize; the live shard is complete
        services.close()
        store.close()
        log.info("freshrag up stopped; index and recovery state kept")
