"""The produce → searchable latency window (pure): percentiles, tenant isolation, the sliding
cut, and the published channel's round trip through a store that merges key by key."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from freshrag.ingest.searchable import (
    BUCKET_RATIO,
    MAX_BUCKET,
    PUBLISH_EVERY_S,
    Buckets,
    LatencyStats,
    LatencyWindow,
    bucket_of,
    bucket_value,
    read_channel,
)

latencies = st.lists(
    st.floats(min_value=0.0, max_value=3600.0, allow_nan=False), min_size=1, max_size=300
)
# above 1 ms and below the last bucket: where bucketed percentiles carry the ±2.5 % promise
measurable = st.lists(
    st.floats(min_value=0.0011, max_value=3600.0, allow_nan=False), min_size=1, max_size=300
)
quantiles = st.sampled_from([0.5, 0.9, 0.99])


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@given(latencies)
def test_exact_percentiles_are_nearest_rank_and_ordered(values: list[float]) -> None:
    stats = LatencyStats.of(values)
    assert stats.count == len(values)
    assert stats.p50 == nearest_rank(values, 0.5)
    assert stats.p90 == nearest_rank(values, 0.9)
    assert stats.p99 == nearest_rank(values, 0.99)
    assert stats.p50 is not None and stats.p90 is not None and stats.p99 is not None
    assert stats.p50 <= stats.p90 <= stats.p99 <= (stats.max or 0) == max(values)
    # at least q of the samples are at or below the q-percentile
    assert sum(v <= stats.p99 for v in values) >= 0.99 * len(values)


def test_no_samples_no_figures() -> None:
    assert LatencyStats.of([]) == LatencyStats()
    assert Buckets().stats() == LatencyStats() and Buckets().quantile(0.5) is None


@given(st.floats(min_value=0.0011, max_value=3600.0, allow_nan=False))
def test_a_bucket_holds_its_value_within_half_a_bucket(value: float) -> None:
    i = bucket_of(value)
    assert 0 <= i < MAX_BUCKET
    assert 1.0 <= value * 1000 / BUCKET_RATIO**i < BUCKET_RATIO * (1 + 1e-9)
    assert abs(math.log(bucket_value(i) / value)) <= math.log(BUCKET_RATIO) / 2 + 1e-9


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_has_a_bucket(value: float) -> None:
    assert 0 <= bucket_of(value) <= MAX_BUCKET


@given(measurable, quantiles)
def test_bucketed_percentiles_are_within_half_a_bucket_of_the_exact_ones(
    values: list[float], q: float
) -> None:
    got = Buckets.of(values).quantile(q)
    exact = nearest_rank(values, q)
    assert got is not None
    assert abs(math.log(got / exact)) <= math.log(BUCKET_RATIO) / 2 + 1e-9


@given(latencies, latencies)
def test_buckets_merge_like_the_samples(a: list[float], b: list[float]) -> None:
    assert (Buckets.of(a) + Buckets.of(b)).counts == Buckets.of(a + b).counts
    assert (Buckets.of(a) + Buckets.of(b)).count == len(a) + len(b)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["acme", "globex"]),
            st.integers(0, 3),
            st.floats(0.0, 60.0),
            st.floats(0.0, 900.0),  # when written, seconds after t0
        ),
        max_size=80,
    ),
    st.floats(300.0, 1200.0),
)
def test_window_keeps_only_the_last_window_and_the_callers_tenant(
    samples: list[tuple[str, int, float, float]], now_after: float
) -> None:
    t0 = 1_700_000_000.0
    window = LatencyWindow(window_s=300.0)
    for tenant, partition, latency, at in sorted(samples, key=lambda s: s[3]):
        window.observe(tenant, partition, latency, t0 + at)
    now = t0 + now_after
    for tenant in ("acme", "globex"):
        expected = [
            lat for t, _p, lat, at in samples if t == tenant and now - 300.0 <= t0 + at <= now
        ]
        assert sorted(window.samples(now, tenant)) == sorted(expected)
        assert window.stats(now, tenant) == LatencyStats.of(expected)
        for p in range(4):
            mine = [
                lat
                for t, part, lat, at in samples
                if t == tenant and part == p and now - 300.0 <= t0 + at <= now
            ]
            assert window.stats(now, tenant, p) == LatencyStats.of(mine)
        newest = max((t0 + at for t, _p, _l, at in samples if t == tenant), default=None)
        assert window.newest(tenant) == newest


def test_non_finite_samples_are_ignored() -> None:
    window = LatencyWindow()
    window.observe("acme", 0, math.nan, 10.0)
    window.observe("acme", 0, 1.0, math.inf)
    assert window.samples(100.0) == [] and window.newest("acme") is None


@settings(max_examples=60)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["acme", "globex", "initech"]),
                st.integers(0, 2),
                st.floats(0.0011, 30.0),
            ),
            max_size=30,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_published_channel_round_trips_through_a_merging_store(
    rounds: list[list[tuple[str, int, float]]],
) -> None:
    """Each round writes samples, publishes, and the store merges key by key (like
    save_watermarks); what the API reads back equals the window, emptied buckets included."""
    window = LatencyWindow(window_s=100.0)
    store: dict[str, int] = {}
    now = 1_700_000_000.0
    for batch in rounds:
        for tenant, partition, latency in batch:
            window.observe(tenant, partition, latency, now)
        store.update(window.channel_snapshot(now))
        view = read_channel(store, now, window_s=100.0)
        expected: dict[tuple[str, int], Buckets] = {}
        for tenant in ("acme", "globex", "initech"):
            for p in range(3):
                values = window.samples(now, tenant, p)
                if values:
                    expected[(tenant, p)] = Buckets.of(values)
        assert {g: b.counts for g, b in view.buckets.items()} == {
            g: b.counts for g, b in expected.items()
        }
        for tenant in ("acme", "globex", "initech"):
            newest = window.newest(tenant)
            assert view.newest.get(tenant) == (
                None if newest is None else int(newest * 1000) / 1000
            )
        now += 60.0  # older samples leave the 100 s window two rounds later
    # long after: every group aged out, and the next publish zeroes what is left
    later = now + 1000.0
    store.update(window.channel_snapshot(later))
    assert read_channel(store, later, window_s=100.0).buckets == {}


def test_snapshot_is_recomputed_at_most_every_publish_interval() -> None:
    window = LatencyWindow()
    window.observe("acme", 0, 0.2, 1000.0)
    first = window.channel_snapshot(1000.0)
    window.observe("acme", 0, 0.4, 1000.1)
    assert window.channel_snapshot(1000.0 + PUBLISH_EVERY_S / 2) == first
    assert window.channel_snapshot(1000.0 + PUBLISH_EVERY_S) != first


def test_a_stopped_publisher_ages_out_and_bad_keys_are_ignored() -> None:
    channel = {
        "acme|0|0|at": 1_000_000,
        "acme|0|0|b10": 3,
        "acme|1|0|at": 1_290_000,
        "acme|1|0|b20": 2,
        "acme|1|1|b20": 7,  # no `at`: never counted
        "acme|newest|0": 1_290_000,
        "acme|newest|1": 1_100_000,
        "acme|x|0|b1": 5,
        "acme|1|0|bz": 5,
        "junk": 1,
        "a|b|c|d|e": 1,
    }
    view = read_channel(channel, now=1_300.0, window_s=100.0)
    assert {g: b.counts for g, b in view.buckets.items()} == {("acme", 1): {20: 2}}
    assert view.newest == {"acme": 1290.0}  # the newest of any process


@settings(max_examples=40)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1), st.floats(0.0011, 30.0)), max_size=60)
)
def test_processes_publishing_one_partition_add_up(
    samples: list[tuple[int, int, float]],
) -> None:
    """In a cluster the writer of a record observes it, so several processes observe one
    partition: each publishes under its own source and the reader adds them up exactly."""
    now = 1_700_000_000.0
    windows = [LatencyWindow() for _ in range(3)]
    for process, partition, latency in samples:
        windows[process].observe("acme", partition, latency, now)
    store: dict[str, int] = {}
    for i, w in enumerate(windows):
        store.update(w.channel_snapshot(now, source=str(i)))
    view = read_channel(store, now)
    for partition in (0, 1):
        values = [lat for _p, part, lat in samples if part == partition]
        got = view.buckets.get(("acme", partition), Buckets())
        assert got.counts == Buckets.of(values).counts
