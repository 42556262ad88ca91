"""The query-embedding LRU cache of the real embedder under concurrent queries (issue 10)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from freshrag.core.embedder import Embedder

pytestmark = [pytest.mark.integration]

HOT = ("alpha: which volcano is on Sicily?", "beta: when do emperor penguins breed?")
EVICTIONS = 12


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every microsecond so a read-then-move race shows up if it exists."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_cache_is_thread_safe_under_hits_and_evictions(fast_switching: None) -> None:
    """Four threads hit two cached queries in a tight loop while a fifth inserts new queries
    into a 2-entry cache, evicting the least recently used one each time. Before the fix a hit
    read an entry, another thread evicted it, and the move to the end raised KeyError (within
    the first two or three evictions when tried)."""
    embedder = Embedder(batch_size=8, query_cache_size=2)
    expected = {t: embedder.embed_documents([t])[0] for t in HOT}
    errors: list[BaseException] = []
    wrong: list[str] = []
    hits = [0]
    done = threading.Event()

    def hot(k: int) -> None:
        i = 0
        try:
            while not done.is_set():
                text = HOT[(i + k) % 2]
                vector = embedder.embed_query(text)
                if i % 512 == 0 and vector != expected[text]:
                    wrong.append(text)
                i += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            done.set()
        hits[0] += i

    def evict() -> None:
        try:
            for i in range(EVICTIONS):
                if done.is_set():
                    break
                assert len(embedder.embed_query(f"unique query {i}")) == embedder.dim
        except BaseException as exc:
            errors.append(exc)
        done.set()

    threads = [threading.Thread(target=hot, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=evict))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert wrong == []
    assert hits[0] > EVICTIONS  # the hot loops really ran during the evictions
    assert len(embedder._cache) <= 2


def test_concurrent_queries_get_the_vectors_of_sequential_ones(embedder: Embedder) -> None:
    texts = [f"question {i} about refunds" for i in range(12)]
    expected = embedder.embed_documents(texts)
    got: dict[int, list[float]] = {}

    def run(i: int) -> None:
        got[i] = embedder.embed_query(texts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, vector in enumerate(expected):
        assert max(abs(a - b) for a, b in zip(got[i], vector, strict=True)) < 1e-5
