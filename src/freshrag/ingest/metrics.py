"""Prometheus metrics of the ingest flow, bound to a registry passed in (no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from freshrag.ingest.searchable import LatencyWindow


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "freshrag_ingest_events",
            "Records by op and outcome: applied, stale (version gate), superseded (newer in the"
            " same batch), skipped_indexed (index already newer), dead_letter, ignored (the"
            " tombstone clearing a repair's replay key)",
            ["op", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "freshrag_ingest_dead_letters",
            "Records sent to the dead-letter topic, by error class and step",
            ["error_class", "step"],
            registry=r,
        )
        self.chunks_written = Counter(
            "freshrag_ingest_chunks_written", "Chunks upserted into the index", registry=r
        )
        self.chunks_reused = Counter(
            "freshrag_ingest_chunks_reused",
            "Chunks of edited documents whose vectors were reused (their text was unchanged)",
            registry=r,
        )
        self.payload_patches = Counter(
            "freshrag_ingest_payload_patches",
            "Documents whose new version only changed metadata: payloads patched, nothing embedded",
            registry=r,
        )
        self.embed_batch_size = Histogram(
            "freshrag_ingest_embed_batch_chunks",
            "Chunks per embedding batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.embed_latency = Histogram(
            "freshrag_ingest_embed_seconds",
            "Embedding latency per batch",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.freshness_lag = Histogram(
            "freshrag_ingest_freshness_lag_seconds",
            "Kafka event timestamp -> written to the index",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
            registry=r,
        )
        # the same samples per tenant and partition over a sliding window (GET /v1/freshness)
        self.searchable = LatencyWindow()
        self.records_read = Counter(
            "freshrag_ingest_records_read",
            "Records read from Kafka; equals the sum of event outcomes when nothing is in flight",
            registry=r,
        )
        self.source_offset = Gauge(
            "freshrag_ingest_source_offset",
            "Next offset the flow will read, per source partition",
            ["topic", "partition"],
            registry=r,
        )

        self.store_retries = Counter(
            "freshrag_ingest_store_retries",
            "Store calls retried after a transient error (unreachable, timeout, 5xx)",
            registry=r,
        )
        self.offsets_lost = Counter(
            "freshrag_ingest_offsets_lost",
            "Records skipped because the recovery offset was below the log start (retention"
            " passed or the topic was recreated)",
            ["topic", "partition"],
            registry=r,
        )
        self.gate_documents = Gauge(
            "freshrag_ingest_gate_documents",
            "Source keys held in the version gate state by this process",
            registry=r,
        )
        self.background_records = Counter(
            "freshrag_ingest_background_records",
            "Records embedded in the background lane (large documents, and later records of"
            " their source key), so small updates do not wait behind them",
            registry=r,
        )

    def on_written(self, tenant: str, partition: int, timestamp_ms: int, now: float) -> None:
        """A record reached the index at `now` (epoch s): produce → searchable latency."""
        lag = max(0.0, now - timestamp_ms / 1000)
        self.freshness_lag.observe(lag)
        self.searchable.observe(tenant, partition, lag, now)

    def on_read(self, topic: str, partition: int, next_offset: int, offsets: list[int]) -> None:
        self.source_offset.labels(topic, str(partition)).set(next_offset)
        if offsets:
            self.records_read.inc(len(offsets))
