"""The Idempotency-Key cache (pure): replay, conflicts, in-flight retries, failures, TTL, size."""

from __future__ import annotations

import threading

import pytest

from freshrag.api.idempotency import IdempotencyCache, IdempotencyConflict, IdempotencyInFlight


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_retry_returns_the_first_result_without_producing_again() -> None:
    cache: IdempotencyCache[int] = IdempotencyCache()
    produced: list[int] = []

    def produce() -> int:
        produced.append(len(produced))
        return 100 + len(produced)

    assert cache.run("acme", "k1", "f", produce, 1) == (101, False)
    assert cache.run("acme", "k1", "f", produce, 1) == (101, True)
    assert produced == [0]
    # another tenant's key with the same name is another request
    assert cache.run("other", "k1", "f", produce, 1) == (102, False)
    with pytest.raises(IdempotencyConflict):
        cache.run("acme", "k1", "different body", produce, 1)
    assert produced == [0, 1]


def test_a_failed_first_request_is_not_stored() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()

    def fail() -> str:
        raise RuntimeError("kafka down")

    with pytest.raises(RuntimeError):
        cache.run("t", "k", "f", fail, 1)
    assert cache.run("t", "k", "f", lambda: "landed", 1) == ("landed", False)


def test_a_retry_during_the_first_request_waits_for_its_result() -> None:
    cache: IdempotencyCache[str] = IdempotencyCache()
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow() -> str:
        calls.append("first")
        started.set()
        release.wait(10)
        return "offset-7"

    results: list[tuple[str, bool]] = []
    first = threading.Thread(target=lambda: results.append(cache.run("t", "k", "f", slow, 10)))
    first.start()
    assert started.wait(10)
    with pytest.raises(IdempotencyInFlight):  # a short wait gives up with 409
        cache.run("t", "k", "f", lambda: "never", 0.01)
    second = threading.Thread(
        target=lambda: results.append(cache.run("t", "k", "f", lambda: "never", 10))
    )
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert sorted(results) == [("offset-7", False), ("offset-7", True)]
    assert calls == ["first"]


def test_results_expire_and_the_cache_is_bounded() -> None:
    clock = Clock()
    cache: IdempotencyCache[int] = IdempotencyCache(ttl_s=60, max_keys=3, clock=clock)
    for i in range(5):
        cache.run("t", f"k{i}", "f", lambda i=i: i, 1)  # type: ignore[misc]
    assert len(cache) == 3
    assert cache.run("t", "k0", "f", lambda: 99, 1) == (99, False)  # evicted: runs again
    assert cache.run("t", "k4", "f", lambda: 99, 1) == (4, True)
    clock.now = 61
    assert cache.run("t", "k4", "f", lambda: 98, 1) == (98, False)  # expired: runs again
