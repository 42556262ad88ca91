"""How fresh the index is, as a caller can see it: `GET /v1/freshness` and its /metrics.

`freshness_report(services, caller)` builds the report (the REST route and the MCP `freshness`
tool both call it). What is global and what is per tenant:

- Global (the change-event topic is shared by every tenant; the figures name no tenant and no
  document): per source partition the indexed watermark, the topic's end offset, the consumer
  lag in records (end offset − watermark) and in seconds (the age of the oldest record not yet
  indexed: the Kafka timestamp of the record at the watermark). A tenant's write waits behind
  every record before it in its partition, whoever wrote them, so this is the lag it sees.
- Per tenant (only the caller's own records count): the newest write the flow made for the
  tenant (`newest_indexed_at` and its age), and produce → searchable latency percentiles over a
  sliding window (Kafka record timestamp → written to the index, from then on searchable),
  overall and per partition.

Kafka is asked at most every `KAFKA_TTL_S` (failures are remembered `KAFKA_RETRY_S`), each
question bounded by `KAFKA_TIMEOUT_S`; an unreachable broker gives null lags with a reason,
never an error or a hang. The latency window is this process's when the flow runs here
(`freshrag up`), else what the ingest process publishes through the store (bucketed, ±2.5 %).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from freshrag.api.auth import Caller
from freshrag.api.services import Services
from freshrag.ingest.searchable import (
    WINDOW_S,
    Buckets,
    ChannelView,
    LatencyStats,
    LatencyWindow,
    freshness_channel,
    read_channel,
)

log = logging.getLogger("freshrag.api")

KAFKA_TTL_S = 1.0  # end offsets and oldest-pending timestamps are reused this long
KAFKA_RETRY_S = 5.0  # after a failure, Kafka is not asked again for this long
KAFKA_TIMEOUT_S = 1.0  # the most one report waits on Kafka, all questions together
CHANNEL_TTL_S = 0.5  # a published latency window is re-read at most this often


# -- the report ---------------------------------------------------------------------------------


class LatencyOut(BaseModel):
    """Produce → searchable latency percentiles (seconds) over the last `window_s` seconds."""

    count: int = Field(0, description="records written in the window")
    p50_s: float | None = None
    p90_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None

    @staticmethod
    def of(stats: LatencyStats) -> LatencyOut:
        return LatencyOut(
            count=stats.count, p50_s=stats.p50, p90_s=stats.p90, p99_s=stats.p99, max_s=stats.max
        )


class PartitionFreshness(BaseModel):
    partition: int
    watermark: int | None = Field(
        None, description="indexed watermark: every record below this offset is indexed (global)"
    )
    end_offset: int | None = Field(None, description="the topic's end offset (global)")
    lag_records: int | None = Field(
        None, description="records not yet indexed: end_offset - watermark (global)"
    )
    lag_seconds: float | None = Field(
        None,
        description="age of the oldest record not yet indexed (its Kafka timestamp); 0 when "
        "lag_records is 0 (global)",
    )
    latency: LatencyOut = Field(
        default_factory=LatencyOut, description="the caller's tenant's records of this partition"
    )


class FreshnessOut(BaseModel):
    """GET /v1/freshness (see the module doc for what is global and what is per tenant)."""

    tenant: str
    topic: str
    generation: str | None = None
    computed_at: datetime
    window_s: float = Field(description="the latency percentiles cover this many seconds")
    latency_source: Literal["in_process", "published", "none"] = Field(
        description="in_process: the flow in this process (exact); published: what the ingest "
        "process published through the store (log buckets, ±2.5 %); none: neither"
    )
    lag_records: int | None = Field(None, description="sum over partitions (global)")
    lag_seconds: float | None = Field(None, description="max over partitions (global)")
    lag_error: str | None = Field(None, description="why the lag is unknown (Kafka unreachable)")
    lag_checked_at: datetime | None = Field(None, description="when Kafka was last asked")
    newest_indexed_at: datetime | None = Field(
        None, description="the tenant's newest write to the index that the flow reports"
    )
    newest_indexed_age_s: float | None = None
    latency: LatencyOut = Field(default_factory=LatencyOut, description="the tenant's records")
    partitions: list[PartitionFreshness] = Field(default_factory=list)


# -- Kafka: end offsets and the oldest pending record, cached -----------------------------------


@dataclass
class KafkaView:
    """What Kafka said last: {partition: end offset}, {partition: timestamp (s) of the record at
    the watermark}, or why it could not say."""

    ends: dict[int, int] | None = None
    lows: dict[int, int] = field(default_factory=dict)  # log start: below it nothing is left
    pending_ts: dict[int, float] = field(default_factory=dict)
    error: str | None = None
    at: float = 0.0  # epoch seconds of the question


class KafkaOffsets:
    """Asks the broker for end offsets and the oldest not-yet-indexed record's timestamp, at
    most every KAFKA_TTL_S, each call bounded; one consumer without a group (nothing commits)."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = KAFKA_TIMEOUT_S) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._consumer: Any = None
        self._view = KafkaView(error="not asked yet")
        self._asked = -1e18  # monotonic
        self._key: tuple[tuple[int, int], ...] = ()
        self._closed = False

    def _client(self) -> Any:
        if self._consumer is None:
            from confluent_kafka import Consumer

            self._consumer = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": "freshrag-freshness",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "socket.timeout.ms": max(1000, int(self.timeout_s * 1000)),
                    "max.partition.fetch.bytes": 1024,  # one record's timestamp is all we read
                    "queued.max.messages.kbytes": 1024,
                    "enable.partition.eof": False,
                    # a broker that is down: a few reconnects (and log lines) per question
                    "reconnect.backoff.ms": 250,
                    "reconnect.backoff.max.ms": 1000,
                    "log.connection.close": False,
                    "log_level": 3,
                }
            )
        return self._consumer

    def view(self, watermarks: dict[int, int]) -> KafkaView:
        """Cached; re-asked after KAFKA_TTL_S (KAFKA_RETRY_S after a failure) or when the
        watermarks moved (the oldest pending record changed)."""
        key = tuple(sorted(watermarks.items()))
        with self._lock:
            if self._closed:
                return KafkaView(error="closed")
            age = time.monotonic() - self._asked
            fresh = age < (KAFKA_RETRY_S if self._view.error else KAFKA_TTL_S)
            if fresh and (self._view.error or key == self._key):
                return self._view
            try:
                self._view = self._ask(watermarks)
            except Exception as exc:  # KafkaException, a timeout: report it, never raise
                self._view = KafkaView(error=f"Kafka at {self.bootstrap}: {exc}"[:300])
                log.debug("freshness: Kafka not answering: %s", exc)
                self._drop()  # no client left reconnecting in the background until asked again
            self._view.at = time.time()
            self._asked = time.monotonic()
            self._key = key
            return self._view

    def _ask(self, watermarks: dict[int, int]) -> KafkaView:
        from confluent_kafka import TopicPartition

        consumer = self._client()
        deadline = time.monotonic() + self.timeout_s

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer within {self.timeout_s}s")
            return remaining

        meta = consumer.list_topics(self.topic, timeout=left())
        found = meta.topics.get(self.topic)
        if found is None or found.error is not None:
            reason = found.error if found is not None else "no such topic"
            raise RuntimeError(f"topic {self.topic!r}: {reason}")
        ends: dict[int, int] = {}
        lows: dict[int, int] = {}
        for p in sorted(found.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=left(), cached=False
            )
            ends[p], lows[p] = int(high), int(low)
        view = KafkaView(ends=ends, lows=lows)
        pending = {
            p: max(watermarks.get(p, 0), lows[p])
            for p in ends
            if ends[p] > max(watermarks.get(p, 0), lows[p])
        }
        if pending:
            try:
                view.pending_ts = self._timestamps(pending, deadline)
            except Exception as exc:  # the end offsets stand; the age is unknown
                log.debug("freshness: oldest pending record not read: %s", exc)
        return view

    def _timestamps(self, pending: dict[int, int], deadline: float) -> dict[int, float]:
        """The Kafka timestamp of the first record at or after each partition's offset."""
        from confluent_kafka import TopicPartition

        consumer = self._client()
        consumer.assign([TopicPartition(self.topic, p, o) for p, o in pending.items()])
        out: dict[int, float] = {}
        try:
            while len(out) < len(pending):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                msg = consumer.poll(min(remaining, 0.25))
                if msg is None or msg.error() is not None:
                    continue
                p = int(msg.partition())
                kind, ts = msg.timestamp()
                if p in pending and p not in out and kind != 0 and ts > 0:
                    out[p] = ts / 1000.0
        finally:
            consumer.unassign()
        return out

    def _drop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except Exception:  # a client that never connected: nothing to release
                log.debug("closing the freshness consumer failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except Exception:  # best effort at shutdown
                log.debug("closing the freshness consumer failed", exc_info=True)


# -- the latency window: in this process, or published by the ingest process --------------------


class PublishedWindow:
    """The window an ingest process publishes through the store, re-read every CHANNEL_TTL_S."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._lock = threading.Lock()
        self._at = -1e18
        self._raw: dict[str, int] = {}

    def view(self, now: float) -> ChannelView:
        with self._lock:
            if time.monotonic() - self._at > CHANNEL_TTL_S:
                channel = freshness_channel(self.services.settings.topic)
                try:
                    self._raw = self.services.current().store.load_watermarks(channel)
                except Exception as exc:  # the store briefly unreachable: keep the last read
                    log.debug("freshness: reading the published window failed: %s", exc)
                self._at = time.monotonic()
            raw = dict(self._raw)
        return read_channel(raw, now)


@dataclass
class FreshnessState:
    """Per-Services helpers, made on first use and closed with the services."""

    kafka: KafkaOffsets
    published: PublishedWindow

    def close(self) -> None:
        self.kafka.close()


_STATE_LOCK = threading.Lock()


def state_of(services: Services) -> FreshnessState:
    with _STATE_LOCK:
        state: FreshnessState | None = getattr(services, "_freshness_state", None)
        if state is None:
            s = services.settings
            state = FreshnessState(
                KafkaOffsets(s.kafka_bootstrap, s.topic), PublishedWindow(services)
            )
            object.__setattr__(services, "_freshness_state", state)
            services.owned.append(state)
        return state


def _window(services: Services) -> LatencyWindow | None:
    window = services.searchable
    return window if isinstance(window, LatencyWindow) else None


def _watermarks(services: Services) -> dict[int, int]:
    if services.watermarks is None:
        return {}
    try:
        raw = services.watermarks()
    except Exception as exc:  # the store briefly unreachable: unknown watermarks
        log.debug("freshness: watermarks unavailable: %s", exc)
        return {}
    out: dict[int, int] = {}
    for k, v in raw.items():
        try:
            out[int(k)] = int(v)
        except ValueError:
            continue
    return out


def _ts(epoch_s: float | None) -> datetime | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, tz=UTC)


def freshness_report(
    services: Services, caller: Caller, window_s: float | None = None
) -> FreshnessOut:
    """The caller's view of how fresh the index is (blocking: up to KAFKA_TIMEOUT_S on Kafka;
    call it off the event loop). `window_s` narrows the latency window (at most WINDOW_S; only
    the in-process window can be narrowed, a published one covers WINDOW_S)."""
    state = state_of(services)
    tenant = caller.tenant
    now = time.time()
    watermarks = _watermarks(services)
    kafka = state.kafka.view(watermarks)

    window = _window(services)
    source: Literal["in_process", "published", "none"]
    per_partition: dict[int, LatencyStats] = {}
    if window is not None:
        source = "in_process"
        span = window.window_s if window_s is None else min(window_s, window.window_s)
        overall = window.stats(now, tenant, since=now - span)
        for p in window.partitions(now, tenant):
            per_partition[p] = window.stats(now, tenant, p, since=now - span)
        newest = window.newest(tenant)
        window_s = span
    else:
        published = state.published.view(now)
        mine = {p: b for (t, p), b in published.buckets.items() if t == tenant}
        source = "published" if published.buckets or published.newest else "none"
        total = Buckets()
        for p, b in mine.items():
            per_partition[p] = b.stats()
            total = total + b
        overall = total.stats()
        newest = published.newest.get(tenant)
        window_s = WINDOW_S

    partitions = sorted(set(watermarks) | set(kafka.ends or {}) | set(per_partition))
    rows: list[PartitionFreshness] = []
    for p in partitions:
        wm = watermarks.get(p)
        end = kafka.ends.get(p) if kafka.ends is not None else None
        lag: int | None = None
        lag_s: float | None = None
        if end is not None:
            lag = max(0, end - max(wm or 0, kafka.lows.get(p, 0)))
            if lag == 0:
                lag_s = 0.0
            elif p in kafka.pending_ts:
                lag_s = max(0.0, now - kafka.pending_ts[p])
        rows.append(
            PartitionFreshness(
                partition=p,
                watermark=wm,
                end_offset=end,
                lag_records=lag,
                lag_seconds=lag_s,
                latency=LatencyOut.of(per_partition.get(p, LatencyStats())),
            )
        )
    lags = [r.lag_records for r in rows if r.lag_records is not None]
    ages = [r.lag_seconds for r in rows if r.lag_seconds is not None]
    unknown_age = any(r.lag_records and r.lag_seconds is None for r in rows)
    return FreshnessOut(
        tenant=tenant,
        topic=services.settings.topic,
        generation=services.current().name or None,
        computed_at=_ts(now) or datetime.now(UTC),
        window_s=window_s,
        latency_source=source,
        lag_records=sum(lags) if kafka.ends is not None else None,
        lag_seconds=None if kafka.ends is None or unknown_age else max(ages, default=0.0),
        # error texts name upstream addresses: only for callers with a key (like /readyz)
        lag_error=kafka.error
        if kafka.error is None or caller.authenticated
        else "Kafka did not answer",
        lag_checked_at=_ts(kafka.at) if kafka.at else None,
        newest_indexed_at=_ts(newest),
        newest_indexed_age_s=None if newest is None else max(0.0, now - newest),
        latency=LatencyOut.of(overall),
        partitions=rows,
    )


# -- /metrics ----------------------------------------------------------------------------------


class FreshnessCollector(Collector):
    """Global figures on the API's /metrics (no tenant labels: /metrics is not per tenant)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            families = list(self._families())
        except Exception:  # /metrics must answer whatever the store or Kafka do
            log.warning("freshness metrics unavailable", exc_info=True)
            return
        yield from families

    def _families(self) -> Iterator[GaugeMetricFamily]:
        services = self.services
        state = state_of(services)
        topic = services.settings.topic
        now = time.time()
        watermarks = _watermarks(services)
        kafka = state.kafka.view(watermarks)
        labels = ["topic", "partition"]
        wm = GaugeMetricFamily(
            "freshrag_indexed_watermark", "Indexed watermark per source partition", labels=labels
        )
        lag = GaugeMetricFamily(
            "freshrag_consumer_lag_records",
            "Records of the source topic not yet indexed (end offset - watermark)",
            labels=labels,
        )
        lag_s = GaugeMetricFamily(
            "freshrag_consumer_lag_seconds",
            "Age of the oldest record not yet indexed (0 when none is pending)",
            labels=labels,
        )
        for p, offset in sorted(watermarks.items()):
            wm.add_metric([topic, str(p)], offset)
        for p, end in sorted((kafka.ends or {}).items()):
            pending = max(0, end - max(watermarks.get(p, 0), kafka.lows.get(p, 0)))
            lag.add_metric([topic, str(p)], pending)
            if pending == 0:
                lag_s.add_metric([topic, str(p)], 0.0)
            elif p in kafka.pending_ts:
                lag_s.add_metric([topic, str(p)], max(0.0, now - kafka.pending_ts[p]))
        yield wm
        yield lag
        yield lag_s
        window = _window(services)
        if window is not None:
            stats = window.stats(now)
        else:
            total = Buckets()
            for b in state.published.view(now).buckets.values():
                total = total + b
            stats = total.stats()
        q = GaugeMetricFamily(
            "freshrag_searchable_latency_window_seconds",
            f"Produce -> searchable latency percentiles over the last {int(WINDOW_S)}s, all"
            " tenants",
            labels=["quantile"],
        )
        for name, value in (("0.5", stats.p50), ("0.9", stats.p90), ("0.99", stats.p99)):
            if value is not None:
                q.add_metric([name], value)
        yield q
        n = GaugeMetricFamily(
            "freshrag_searchable_latency_window_records",
            f"Records written in the last {int(WINDOW_S)}s (the percentiles' sample size)",
        )
        n.add_metric([], stats.count)
        yield n


def install_metrics(services: Services) -> None:
    """Register the freshness figures on the API's registry once per Services."""
    registry = getattr(getattr(services, "metrics", None), "registry", None)
    if registry is None:  # a stand-in for Services (unit tests): nothing to register on
        return
    with _STATE_LOCK:
        if getattr(services, "_freshness_metrics", False):
            return
        object.__setattr__(services, "_freshness_metrics", True)
    registry.register(FreshnessCollector(services))


__all__ = [
    "FreshnessOut",
    "KafkaOffsets",
    "LatencyOut",
    "PartitionFreshness",
    "freshness_report",
    "install_metrics",
]
