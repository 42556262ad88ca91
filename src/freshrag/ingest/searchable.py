"""Produce → searchable latency over a sliding window, per tenant and partition (pure).

The flow observes, for every record it writes to the index, the time from the record's Kafka
timestamp (when it was produced) to the write (from then on a search finds it). A
`LatencyWindow` keeps those samples for the last `window_s` seconds and answers percentiles.

Separate API processes (`freshrag serve` replicas) cannot read the flow's memory, so the window
is also published through the store like the watermarks: a flat `{str: int}` channel
(`channel_snapshot`) of log-spaced bucket counts per (tenant, partition) and publishing process,
plus each tenant's newest write. In a cluster the process that writes a record (the owner of
its document) observes it, so several processes observe one partition: each publishes under its
own `source` (its stable process id) and `read_channel` adds them up (bucket counts merge
exactly). Its percentiles are within half a bucket (±`BUCKET_RATIO`/2, i.e. ±2.5 %) of the
exact ones.

Channel keys: ``<tenant>|<partition>|<source>|b<i>`` (samples in bucket i),
``<tenant>|<partition>|<source>|at`` (epoch ms of the publishing snapshot) and
``<tenant>|newest|<source>`` (epoch ms of the tenant's newest write). A tenant never holds
``|`` (API key grants use it as their separator).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

WINDOW_S = 300.0  # the sliding window the percentiles cover
MAX_SAMPLES = 50_000  # bounded memory: beyond this, the oldest samples leave the window early
BUCKET_RATIO = 1.05  # log-spaced bucket bounds: 1 ms * 1.05**i
MIN_MS = 1.0
MAX_BUCKET = 400  # 1.05**400 ms ≈ 3.3 days: anything slower lands in the last bucket
PUBLISH_EVERY_S = 1.0  # channel_snapshot recomputes at most this often
QUANTILES = (0.5, 0.9, 0.99)


def freshness_channel(topic: str) -> str:
    """The store channel (a `save_watermarks` topic name) the window is published on."""
    return f"{topic}#freshness"


def bucket_of(seconds: float) -> int:
    """The bucket of a latency: i with 1.05**i <= ms < 1.05**(i+1) (0 below 1 ms)."""
    ms = seconds * 1000.0
    if not ms > MIN_MS:  # also NaN
        return 0
    if not math.isfinite(ms):
        return MAX_BUCKET
    return min(MAX_BUCKET, int(math.log(ms / MIN_MS) / math.log(BUCKET_RATIO)))


def bucket_value(index: int) -> float:
    """A bucket's representative latency in seconds: the geometric middle of its bounds."""
    if index <= 0:
        return MIN_MS / 1000.0 / 2 if index < 0 else MIN_MS * math.sqrt(BUCKET_RATIO) / 1000.0
    return float(MIN_MS * BUCKET_RATIO ** (index + 0.5) / 1000.0)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted `values` (non-empty): the smallest value with at least
    q of the samples at or below it."""
    rank = max(1, math.ceil(q * len(values)))
    return values[min(rank, len(values)) - 1]


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Percentiles of the samples in the window (seconds); all None when there were none."""

    count: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None

    @staticmethod
    def of(values: Iterable[float]) -> LatencyStats:
        ordered = sorted(values)
        if not ordered:
            return LatencyStats()
        return LatencyStats(
            len(ordered),
            percentile(ordered, 0.5),
            percentile(ordered, 0.9),
            percentile(ordered, 0.99),
            ordered[-1],
        )


@dataclass(frozen=True)
class Buckets:
    """Bucketed samples: {bucket index: count}; mergeable (`+`)."""

    counts: Mapping[int, int] = field(default_factory=dict)

    def __add__(self, other: Buckets) -> Buckets:
        merged = dict(self.counts)
        for i, n in other.counts.items():
            merged[i] = merged.get(i, 0) + n
        return Buckets(merged)

    @property
    def count(self) -> int:
        return sum(n for n in self.counts.values() if n > 0)

    def quantile(self, q: float) -> float | None:
        """Nearest-rank percentile, as the representative value of the bucket it falls in."""
        total = self.count
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for i in sorted(self.counts):
            n = self.counts[i]
            if n <= 0:
                continue
            seen += n
            if seen >= rank:
                return bucket_value(i)
        return bucket_value(max(self.counts))  # pragma: no cover - rank <= total

    def stats(self) -> LatencyStats:
        total = self.count
        if total == 0:
            return LatencyStats()
        top = max(i for i, n in self.counts.items() if n > 0)
        return LatencyStats(
            total, self.quantile(0.5), self.quantile(0.9), self.quantile(0.99), bucket_value(top)
        )

    @staticmethod
    def of(values: Iterable[float]) -> Buckets:
        counts: dict[int, int] = {}
        for v in values:
            i = bucket_of(v)
            counts[i] = counts.get(i, 0) + 1
        return Buckets(counts)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # epoch seconds when the record was written to the index
    latency: float  # seconds from its Kafka timestamp to `at`
    tenant: str
    partition: int


@dataclass(frozen=True)
class ChannelView:
    """What a published channel says, already cut to the window."""

    buckets: Mapping[tuple[str, int], Buckets]
    newest: Mapping[str, float]  # tenant -> epoch seconds of its newest write


class LatencyWindow:
    """Thread-safe sliding window of produce → searchable samples (fed by the ingest flow)."""

    def __init__(self, window_s: float = WINDOW_S, max_samples: int = MAX_SAMPLES) -> None:
        self.window_s = window_s
        self._samples: deque[Sample] = deque(maxlen=max_samples)
        self._newest: dict[str, float] = {}
        self._lock = threading.Lock()
        self._published: set[str] = set()
        self._snapshot: dict[str, int] = {}
        self._snapshot_at = -math.inf

    def observe(self, tenant: str, partition: int, latency_s: float, at: float) -> None:
        if not math.isfinite(latency_s) or not math.isfinite(at):
            return
        with self._lock:
            self._samples.append(Sample(at, max(0.0, latency_s), tenant, partition))
            if at > self._newest.get(tenant, -math.inf):
                self._newest[tenant] = at

    def _recent(self, now: float) -> list[Sample]:
        cutoff = now - self.window_s
        with self._lock:
            while self._samples and self._samples[0].at < cutoff:
                self._samples.popleft()
            return [s for s in self._samples if s.at <= now]

    def samples(
        self,
        now: float,
        tenant: str | None = None,
        partition: int | None = None,
        since: float | None = None,
    ) -> list[float]:
        """The latencies in the window (or written at or after `since`), of one tenant and/or
        partition (None: all)."""
        return [
            s.latency
            for s in self._recent(now)
            if (tenant is None or s.tenant == tenant)
            and (partition is None or s.partition == partition)
            and (since is None or s.at >= since)
        ]

    def stats(
        self,
        now: float,
        tenant: str | None = None,
        partition: int | None = None,
        since: float | None = None,
    ) -> LatencyStats:
        return LatencyStats.of(self.samples(now, tenant, partition, since))

    def partitions(self, now: float, tenant: str | None = None) -> list[int]:
        return sorted(
            {s.partition for s in self._recent(now) if tenant is None or s.tenant == tenant}
        )

    def newest(self, tenant: str) -> float | None:
        """Epoch seconds of the tenant's newest write this process made (None: none yet)."""
        with self._lock:
            return self._newest.get(tenant)

    def channel_snapshot(self, now: float, source: str = "0") -> dict[str, int]:
        """The window as a `{str: int}` channel for the store (see the module doc), published
        by `source` (a stable id of the publishing process, without `|`). Buckets
        that emptied since the last snapshot are sent as 0, because the store merges key by
        key. Recomputed at most every PUBLISH_EVERY_S; otherwise the previous one is returned
        (a publisher polling it then sees no change)."""
        if now - self._snapshot_at < PUBLISH_EVERY_S:
            return dict(self._snapshot)
        grouped: dict[tuple[str, int], list[float]] = {}
        for s in self._recent(now):
            grouped.setdefault((s.tenant, s.partition), []).append(s.latency)
        out: dict[str, int] = {}
        at_ms = int(now * 1000)
        for (tenant, partition), values in grouped.items():
            out[f"{tenant}|{partition}|{source}|at"] = at_ms
            for i, n in Buckets.of(values).counts.items():
                out[f"{tenant}|{partition}|{source}|b{i}"] = n
        with self._lock:
            for tenant, at in self._newest.items():
                out[f"{tenant}|newest|{source}"] = int(at * 1000)
        for gone in self._published - out.keys():
            out[gone] = 0
        self._published = {k for k, v in out.items() if v != 0}
        self._snapshot, self._snapshot_at = out, now
        return dict(out)


def read_channel(channel: Mapping[str, int], now: float, window_s: float = WINDOW_S) -> ChannelView:
    """Parse a published channel, adding up the publishing processes; a process's groups whose
    snapshot is older than the window are left out (it stopped: its samples have aged out).
    Malformed keys are ignored."""
    at: dict[tuple[str, int, str], float] = {}
    counts: dict[tuple[str, int, str], dict[int, int]] = {}
    newest: dict[str, float] = {}
    for key, value in channel.items():
        parts = key.split("|")
        if len(parts) == 3 and parts[1] == "newest":
            if value > 0:
                newest[parts[0]] = max(newest.get(parts[0], 0.0), value / 1000.0)
            continue
        if len(parts) != 4:
            continue
        tenant, part, source, what = parts
        try:
            partition = int(part)
        except ValueError:
            continue
        if what == "at":
            at[(tenant, partition, source)] = value / 1000.0
        elif what.startswith("b") and what[1:].isdigit() and value > 0:
            counts.setdefault((tenant, partition, source), {})[int(what[1:])] = value
    buckets: dict[tuple[str, int], Buckets] = {}
    for (tenant, partition, source), c in counts.items():
        published = at.get((tenant, partition, source))
        if published is not None and now - published <= window_s:
            group = (tenant, partition)
            buckets[group] = buckets.get(group, Buckets()) + Buckets(c)
    return ChannelView(buckets, newest)


__all__ = [
    "QUANTILES",
    "WINDOW_S",
    "Buckets",
    "ChannelView",
    "LatencyStats",
    "LatencyWindow",
    "bucket_of",
    "bucket_value",
    "freshness_channel",
    "percentile",
    "read_channel",
]
