"""Everything a request needs, built once in the app lifespan (or handed in by a caller that
already owns them, as `freshrag up` and tests do)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from freshrag.core.settings import Settings
from freshrag.generate.answer import Answerer
from freshrag.generate.llm import LLMClient
from freshrag.generate.prompt import PromptSettings
from freshrag.retrieve.contract import Store
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

    def close(self) -> None:
        for resource in reversed(self.owned):
            try:
                resource.close()
            except Exception:  # closing is best effort at shutdown
                log.exception("closing %r failed", resource)


def published_watermarks(
    store: Store, topic: str, ttl_s: float = 0.05
) -> Callable[[], dict[str, int]]:
    """Read the watermarks an ingest process published, cached briefly (polled by waiters)."""
    cache: dict[str, Any] = {"at": 0.0, "value": {}}

    def read() -> dict[str, int]:
        now = time.monotonic()
        if now - cache["at"] > ttl_s:
            cache["value"] = store.load_watermarks(topic)
            cache["at"] = now
        return dict(cache["value"])

    return read


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
) -> Services:
    """Build what was not handed in; only what is built here is closed by `Services.close`."""
    from freshrag.core.sparse import Bm25Encoder

    owned: list[Any] = []
    if embedder is None:
        from freshrag.core.embedder import Embedder

        embedder = Embedder.from_settings(settings)
    if store is None:
        from freshrag.retrieve.stores import open_settings_store

        store = open_settings_store(settings)
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
    if watermarks is None:  # a separate ingest process publishes them through the store
        watermarks = published_watermarks(store, settings.topic)
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
    )
