"""Everything a request needs, built once in the app lifespan (or handed in by a caller that
already owns them, as `freshrag up` and tests do)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from freshrag.api.serving import Generation, ServingIndex
from freshrag.core.settings import Settings
from freshrag.generate.answer import Answerer
from freshrag.generate.llm import LLMClient
from freshrag.generate.prompt import PromptSettings
from freshrag.retrieve.contract import DENSE_DIM, Store
from freshrag.retrieve.generations import Catalog, IndexManifest, differences
from freshrag.retrieve.search import HybridSearcher

log = logging.getLogger("freshrag.api")


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "freshrag_http_request_seconds",
            "Request latency by route and status",
            ["method", "route", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.retrieval = Histogram(
            "freshrag_retrieval_seconds",
            "Hybrid search latency, query embedding included",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.llm = Histogram(
            "freshrag_llm_seconds",
            "LLM call latency (whole answer)",
            ["stream"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.tokens = Counter(
            "freshrag_llm_tokens", "Tokens spent on the LLM", ["kind"], registry=r
        )
        self.llm_errors = Counter(
            "freshrag_llm_errors", "LLM calls that failed after retries", registry=r
        )
        self.answers = Counter(
            "freshrag_answers",
            "Chat answers by how they were made (the grounding guard's decision)",
            ["type"],
            registry=r,
        )


@dataclass
class Services:
    settings: Settings
    store: Store
    embedder: Any
    searcher: HybridSearcher
    llm: LLMClient
    answerer: Answerer
    producer: Any  # EventProducer | None: None means document writes answer 503
    metrics: ApiMetrics
    watermarks: Callable[[], dict[str, int]] | None = None
    recent: Any = None  # ingest.activity.RecentWrites when the flow runs in this process
    flow_alive: Callable[[], bool] | None = None  # set by `freshrag up`
    owned: list[Any] = field(default_factory=list)
    serving: ServingIndex | None = None  # follows `freshrag reindex` switches
    # ingest.searchable.LatencyWindow when the flow runs in this process (GET /v1/freshness);
    # None: read what a separate ingest process publishes through the store
    searchable: Any = None

    def current(self) -> Generation:
        """The generation this request reads: take it once, and use only it."""
        if self.serving is not None:
            return self.serving.current()
        return Generation(getattr(self.store, "collection", ""), self.store, self.searcher)

    def close(self) -> None:
        for resource in reversed(self.owned):
            try:
                resource.close()
            except Exception:  # closing is best effort at shutdown
                log.exception("closing %r failed", resource)


def published_watermarks(
    store: Store | Callable[[], Store], topic: str, ttl_s: float = 0.05
) -> Callable[[], dict[str, int]]:
    """Read the watermarks an ingest process published, cached briefly (polled by waiters).
    `store` may be a callable: the serving generation's store, which a re-index switches."""
    cache: dict[str, Any] = {"at": 0.0, "value": {}, "store": None}

    def read() -> dict[str, int]:
        now = time.monotonic()
        current = store() if callable(store) else store
        if now - cache["at"] > ttl_s or cache["store"] is not current:
            cache["value"] = current.load_watermarks(topic)
            cache["at"] = now
            cache["store"] = current
        return dict(cache["value"])

    return read


def generation_opener(
    settings: Settings, base_embedder: Any, own: IndexManifest | None
) -> Callable[[str, IndexManifest | None], Generation]:
    """Opens a generation for reading, with its own query model when it was built with another
    one (a re-index that changed the model)."""
    from freshrag.core.sparse import Bm25Encoder
    from freshrag.retrieve.stores import open_settings_store

    def open_generation(name: str, manifest: IndexManifest | None) -> Generation:
        embedder = base_embedder
        dim = int(manifest.build["dimension"]) if manifest is not None else DENSE_DIM
        if manifest is not None and (own is None or differences(manifest, own)):
            from freshrag.core.embedder import Embedder

            embedder = Embedder.from_settings(
                settings.model_copy(update=manifest.settings_update())
            )
        store = open_settings_store(settings, name, dense_dim=dim)
        return Generation(name, store, HybridSearcher(store, embedder, Bm25Encoder()), manifest)

    return open_generation


def own_manifest(settings: Settings, embedder: Any) -> IndexManifest | None:
    """This process's build settings (None when the embedder cannot say its dimension)."""
    from freshrag.retrieve.generations import manifest_for

    dim = getattr(embedder, "dimension", None)
    return manifest_for(settings, int(dim)) if isinstance(dim, int) else None


def follow_generations(
    settings: Settings,
    initial: Generation,
    embedder: Any,
    catalog: Catalog | None = None,
    poll_s: float = 1.0,
) -> ServingIndex:
    """A ServingIndex that starts on `initial` and follows the settings' serving pointer."""
    from freshrag.retrieve.stores import open_catalog

    catalog = catalog or open_catalog(settings)
    opener = generation_opener(settings, embedder, own_manifest(settings, embedder))
    serving = ServingIndex(initial, catalog, opener, poll_s=poll_s)
    serving.start()
    return serving


def build_services(
    settings: Settings,
    *,
    store: Store | None = None,
    embedder: Any = None,
    producer: Any = None,
    with_producer: bool = True,
    watermarks: Callable[[], dict[str, int]] | None = None,
    recent: Any = None,
    registry: CollectorRegistry | None = None,
    follow: bool | None = None,
) -> Services:
    """Build what was not handed in; only what is built here is closed by `Services.close`.

    `follow` (default: when the store is built here) makes requests follow the serving pointer
    of `freshrag reindex`; the store starts as the serving generation."""
    from freshrag.core.sparse import Bm25Encoder

    owned: list[Any] = []
    if embedder is None:
        from freshrag.core.embedder import Embedder

        embedder = Embedder.from_settings(settings)
    catalog: Catalog | None = None
    if follow is None:
        follow = store is None
    if store is None:
        from freshrag.retrieve.stores import open_catalog, open_settings_store

        catalog = open_catalog(settings)
        name = catalog.serving()
        manifest = catalog.read_manifest(name)
        dim = int(manifest.build["dimension"]) if manifest is not None else DENSE_DIM
        own = own_manifest(settings, embedder)
        if manifest is not None and own is not None and differences(manifest, own):
            from freshrag.core.embedder import Embedder

            log.info("serving %s: queries use the model it was built with", name)
            embedder = Embedder.from_settings(
                settings.model_copy(update=manifest.settings_update())
            )
        store = open_settings_store(settings, name, dense_dim=dim)
        owned.append(store)
    if producer is None and with_producer:
        from freshrag.ingest.producer import EventProducer

        producer = EventProducer(settings.kafka_bootstrap, settings.topic)
        owned.append(producer)
    llm = LLMClient.from_settings(settings)
    owned.append(llm)
    answerer = Answerer(
        llm,
        PromptSettings(
            context_window=settings.llm_context_window, answer_tokens=settings.chat_max_tokens
        ),
        min_score=settings.chat_min_score,
        retry_ungrounded=settings.grounding_retry,
    )
    searcher = HybridSearcher(store, embedder, Bm25Encoder())
    serving: ServingIndex | None = None
    if follow:
        initial = Generation(getattr(store, "collection", settings.collection), store, searcher)
        serving = follow_generations(settings, initial, embedder, catalog)
        owned.append(serving)
    if watermarks is None:  # a separate ingest process publishes them through the store
        watermarks = published_watermarks(
            (lambda: serving.current().store) if serving is not None else store, settings.topic
        )
    return Services(
        settings=settings,
        store=store,
        embedder=embedder,
        searcher=searcher,
        llm=llm,
        answerer=answerer,
        producer=producer,
        metrics=ApiMetrics(registry),
        watermarks=watermarks,
        recent=recent,
        owned=owned,
        serving=serving,
    )
