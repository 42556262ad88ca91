"""Applies index writes to a Store: idempotent, ordered, never skipping, never stuck on one doc.

- Upserts write chunks under deterministic IDs, then delete the document's other points; deletes
  remove every point up to their version. Both are conditioned on versions, so replays are safe.
- A transient store error (unreachable, timeout, 5xx) is retried with backoff; past the retry
  budget it is raised, so the flow fails loudly and a restart resumes from its recovery state.
- Any other error of one document dead-letters that document (step `index`) once a probe shows
  the store itself answers; the rest of the batch is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from freshrag.ingest.events import DeadLetter, RawRecord
from freshrag.ingest.indexing import IndexWrite, WriteDelete, WritePatch, WriteUpsert
from freshrag.retrieve.contract import Store

log = logging.getLogger("freshrag.ingest.index")

STEP = "index"
_R = TypeVar("_R")
_TRANSIENT_NAMES = {
    "ResponseHandlingException",  # qdrant-client: the request never got an answer
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "WriteTimeout",
    "PoolTimeout",
    "TimeoutException",
    "NetworkError",
    "ReadError",
    "WriteError",
    "RemoteProtocolError",
    "_InactiveRpcError",
    "AioRpcError",
}
_TRANSIENT_WORDS = (
    "connection refused",
    "connection reset",
    "timed out",
    "timeout",
    "no space left",
    "too many open files",
    "temporarily unavailable",
    "service unavailable",
)


def is_transient(exc: BaseException) -> bool:
    """Errors that say the store is unreachable or busy, not that the document is bad."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if any(type(e).__name__ in _TRANSIENT_NAMES for e in _chain(exc)):
        return True
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    if isinstance(exc, OSError):
        return True
    text = str(exc).lower()
    return any(word in text for word in _TRANSIENT_WORDS)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


class StoreUnavailableError(RuntimeError):
    """The store stayed unreachable past the retry budget; nothing was skipped."""


@dataclass
class WriteOutcome:
    applied: list[IndexWrite]
    dead_letters: list[DeadLetter]


class IndexWriter:
    def __init__(
        self,
        store: Store,
        *,
        retry_budget_s: float = 60.0,
        max_points_per_call: int = 256,
        on_retry: Callable[[BaseException], None] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self.retry_budget_s = retry_budget_s
        self.max_points_per_call = max(1, max_points_per_call)
        self.on_retry = on_retry
        self._sleep = sleep

    def apply(self, writes: Sequence[IndexWrite]) -> WriteOutcome:
        """Apply writes in order; upserts of distinct documents share store calls."""
        outcome = WriteOutcome([], [])
        group: list[IndexWrite] = []
        keys: set[str] = set()
        for write in writes:
            key = write.event.doc_key
            if key in keys:
                self._flush(group, outcome)
                group, keys = [], set()
            group.append(write)
            keys.add(key)
        self._flush(group, outcome)
        return outcome

    # -- internals ---------------------------------------------------------------------------

    def read(self, call: Callable[[], _R]) -> _R:
        """A store read with the same retry policy and budget as the writes (the indexer's
        layout lookups): a store blip must not end the flow before the budget is spent."""
        box: list[_R] = []
        self._retrying(lambda: box.append(call()))
        return box[-1]

    def _retrying(self, call: Callable[[], object]) -> None:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("store unavailable (attempt %d, %s); retrying", state.attempt_number, exc)
            if exc is not None and self.on_retry is not None:
                self.on_retry(exc)

        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential(multiplier=0.1, max=5),
            stop=stop_after_delay(self.retry_budget_s),
            before_sleep=before_sleep,
            reraise=True,
        )
        if self._sleep is not None:
            retrying = retrying.copy(sleep=self._sleep)
        try:
            retrying(call)
        except Exception as exc:
            if is_transient(exc):
                raise StoreUnavailableError(
                    f"the index store stayed unavailable for {self.retry_budget_s:g}s: {exc}"
                ) from exc
            raise

    def _flush(self, group: list[IndexWrite], outcome: WriteOutcome) -> None:
        if not group:
            return
        try:
            self._retrying(lambda: self._write_group(group))
            outcome.applied.extend(group)
            return
        except StoreUnavailableError:
            raise
        except Exception as exc:
            if len(group) == 1:
                self._dead_or_raise(group[0], exc, outcome)
                return
        for write in group:  # isolate the document(s) the store refuses
            try:
                self._retrying(_bind(self._write_group, [write]))
                outcome.applied.append(write)
            except StoreUnavailableError:
                raise
            except Exception as exc:
                self._dead_or_raise(write, exc, outcome)

    def _dead_or_raise(self, write: IndexWrite, exc: Exception, outcome: WriteOutcome) -> None:
        """Dead-letter a document only if the store answers a probe: a broken store is an
        outage (raise, never skip), not a bad document."""
        try:
            self._retrying(
                lambda: self.store.chunk_layouts(write.event.tenant, [write.event.doc_id])
            )
        except Exception as probe:
            raise StoreUnavailableError(
                f"the index store fails writes and probes: {exc}; probe: {probe}"
            ) from exc
        log.error("index refused document %s: %s", write.event.doc_key, exc)
        outcome.dead_letters.append(dead_letter_of(write, exc))

    def _write_group(self, group: Sequence[IndexWrite]) -> None:
        points = [p for w in group if isinstance(w, WriteUpsert) for p in w.points]
        for start in range(0, len(points), self.max_points_per_call):
            self.store.upsert_chunks(points[start : start + self.max_points_per_call])
        for w in group:
            if isinstance(w, WritePatch):  # in place; the cleanup below is a no-op normally
                e0 = w.event
                self.store.patch_document(e0.tenant, e0.doc_id, w.payload)
                self.store.delete_versions_below(e0.tenant, e0.doc_id, e0.version, w.keep_chunks)
            elif isinstance(w, WriteUpsert):
                e = w.event
                self.store.delete_versions_below(e.tenant, e.doc_id, e.version, w.keep_chunks)
            elif isinstance(w, WriteDelete):
                e2 = w.event
                self.store.delete_document(e2.tenant, e2.doc_id, up_to_version=e2.version)


def _bind(
    fn: Callable[[Sequence[IndexWrite]], None], group: Sequence[IndexWrite]
) -> Callable[[], None]:
    return lambda: fn(group)


def dead_letter_of(write: IndexWrite, exc: BaseException) -> DeadLetter:
    event = write.event
    raw = getattr(event, "raw", None) or RawRecord(event.doc_id.encode(), None, event.origin)
    return DeadLetter(
        raw.key,
        raw.value,
        raw.origin,
        type(exc).__name__,
        f"the index refused document {event.doc_key}: {exc}",
        STEP,
    )


def apply_writes(store: Store, writes: Sequence[IndexWrite]) -> None:
    """Apply writes outside the flow (evaluation, tools, tests); any refusal raises."""
    outcome = IndexWriter(store).apply(writes)
    if outcome.dead_letters:
        raise RuntimeError(outcome.dead_letters[0].message)
