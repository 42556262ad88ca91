"""Idempotency keys for document writes: a client's retry returns the first result (pure).

`POST /v1/documents` (and `DELETE`) accept an `Idempotency-Key` header. The first request with
a key produces the event; a retry with the same key and the same request, from the same tenant,
gets the original partition/offset/token back without producing again. A retry that arrives
while the first is still in flight waits for it. The same key with a different request is
rejected. Results are kept in memory for `ttl_s` (at most `max_keys` of them) in each API
process: behind a load balancer, a retry that lands on another replica is not deduplicated
(the index stays correct anyway: an equal upsert is skipped by the version gate).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_TTL_S = 3600.0
DEFAULT_MAX_KEYS = 10_000


class IdempotencyConflict(ValueError):
    """The key was used before for a different request."""


class IdempotencyInFlight(RuntimeError):
    """The first request with this key is still running after the wait."""


@dataclass
class _Entry(Generic[T]):
    fingerprint: str
    done: threading.Event = field(default_factory=threading.Event)
    result: T | None = None
    ok: bool = False
    expires: float = 0.0


class IdempotencyCache(Generic[T]):
    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _Entry[T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def run(
        self, tenant: str, key: str, fingerprint: str, produce: Callable[[], T], wait_s: float
    ) -> tuple[T, bool]:
        """(result, replayed): the stored result of an earlier request with this key, or
        `produce()`'s, stored when it succeeds (a failure is not stored: a retry runs again)."""
        slot = (tenant, key)
        while True:
            with self._lock:
                self._expire()
                entry = self._entries.get(slot)
                if entry is not None and entry.fingerprint != fingerprint:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was used for a different request"
                    )
                if entry is not None and entry.ok:
                    self._entries.move_to_end(slot)
                    return entry.result, True  # type: ignore[return-value]
                if entry is None:
                    entry = _Entry(fingerprint)
                    self._entries[slot] = entry
                    break  # this request produces
            # the first request with this key is in flight: wait for its outcome
            if not entry.done.wait(wait_s):
                raise IdempotencyInFlight("a request with this Idempotency-Key is in flight")
            # succeeded: the next pass returns it; failed: its entry is gone, we produce
        try:
            result = produce()
        except BaseException:
            with self._lock:
                if self._entries.get(slot) is entry:
                    del self._entries[slot]
            entry.done.set()
            raise
        with self._lock:
            entry.result, entry.ok = result, True
            entry.expires = self._clock() + self.ttl_s
            self._entries.move_to_end(slot)
            self._evict()
        entry.done.set()
        return result, False

    def _expire(self) -> None:
        now = self._clock()
        for slot in [s for s, e in self._entries.items() if e.ok and e.expires <= now]:
            del self._entries[slot]

    def _evict(self) -> None:
        """Over `max_keys`: drop the least recently used stored results (never in-flight)."""
        excess = len(self._entries) - self.max_keys
        if excess <= 0:
            return
        for slot in [s for s, e in self._entries.items() if e.ok][:excess]:
            del self._entries[slot]
