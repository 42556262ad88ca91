"""Per-partition indexed watermarks for read-your-writes (pure, thread-safe).

The watermark of a partition is the offset below which every record read has reached its final
outcome: written to the index, dropped as stale or superseded, or dead-lettered. Records finish
out of order (documents go through different workers and batches), so the tracker keeps the
offsets still in flight; offsets Kafka skips (compaction, transaction markers) never block it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class WatermarkTracker:
    """Holds only the offsets in flight (read, not yet final), so it stays as small as the
    flow's buffers; the watermark is the lowest of them, or the next offset to read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, set[int]] = {}
        self._next: dict[int, int] = {}

    def read(self, partition: int, offsets: Iterable[int], next_offset: int) -> None:
        """The source read these offsets; `next_offset` is where it reads next."""
        with self._lock:
            self._pending.setdefault(partition, set()).update(offsets)
            self._next[partition] = max(next_offset, self._next.get(partition, 0))

    def restore(self, items: Iterable[tuple[int, int]]) -> None:
        """Records restored from a recovery snapshot (not read again): in flight until done."""
        with self._lock:
            for partition, offset in items:
                self._pending.setdefault(partition, set()).add(offset)

    def done(self, partition: int, offset: int) -> None:
        with self._lock:
            self._pending.get(partition, set()).discard(offset)

    def done_many(self, items: Iterable[tuple[int, int]]) -> None:
        with self._lock:
            for partition, offset in items:
                self._pending.get(partition, set()).discard(offset)

    def in_flight(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pending.values())

    def snapshot(self) -> dict[str, int]:
        """{partition: watermark}; every record of the partition below it is final."""
        out: dict[str, int] = {}
        with self._lock:
            for partition, next_offset in self._next.items():
                pending = self._pending.get(partition)
                out[str(partition)] = min(pending) if pending else next_offset
        return out
