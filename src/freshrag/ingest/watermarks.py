"""Per-partition indexed watermarks for read-your-writes (pure, thread-safe).

The watermark of a partition is the offset below which every record read has reached its final
outcome: written to the index, dropped as stale or superseded, or dead-lettered.

In a bytewax cluster a record is read by the worker that owns its Kafka partition and finished
by the worker that owns its document, often in another process. So no process can compute a
watermark from what it sees alone. Instead both events travel *through the dataflow* to one
owner per partition (a stateful step keyed by partition): the source emits a `ReadNotice` per
batch, every final outcome emits a `Finished`. The owner folds them into a `PartitionProgress`,
which is part of the recovery snapshot like any other state, and publishes the watermark. Each
partition has exactly one owner in a cluster, so the published values never need merging.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

# Offsets finished before their read notice arrived (the two travel different routes) are
# remembered until it does; bounded so a notice that never comes cannot grow the state.
MAX_EARLY = 100_000


@dataclass(frozen=True, slots=True)
class ReadNotice:
    """The source read `offsets` of `partition`; it reads `next_offset` next."""

    partition: int
    offsets: tuple[int, ...]
    next_offset: int


@dataclass(frozen=True, slots=True)
class Finished:
    """These offsets of `partition` reached their final outcome."""

    partition: int
    offsets: tuple[int, ...]


Progress = ReadNotice | Finished


def finished_by_partition(items: Iterable[tuple[int, int]]) -> list[Finished]:
    """(partition, offset) pairs grouped into one `Finished` per partition."""
    grouped: dict[int, list[int]] = {}
    for partition, offset in items:
        grouped.setdefault(partition, []).append(offset)
    return [Finished(p, tuple(sorted(set(o)))) for p, o in sorted(grouped.items())]


@dataclass
class PartitionProgress:
    """What one partition's owner knows: offsets read and not yet final, and where the source
    reads next. Small: it holds only the offsets in flight."""

    next_offset: int = 0
    pending: set[int] = field(default_factory=set)
    early: set[int] = field(default_factory=set)

    def apply(self, item: Progress) -> None:
        if isinstance(item, ReadNotice):
            offsets = set(item.offsets)
            settled = offsets & self.early
            self.early -= settled
            self.pending |= offsets - settled
            self.next_offset = max(self.next_offset, item.next_offset)
        else:
            offsets = set(item.offsets)
            unknown = offsets - self.pending
            self.pending -= offsets
            self.early |= unknown
            if len(self.early) > MAX_EARLY:
                self.early = set(sorted(self.early)[-MAX_EARLY:])

    def watermark(self) -> int:
        return min(self.pending) if self.pending else self.next_offset

    def to_state(self) -> tuple[int, list[int], list[int]]:
        return (self.next_offset, sorted(self.pending), sorted(self.early))

    @classmethod
    def from_state(cls, state: tuple[int, list[int], list[int]] | None) -> PartitionProgress:
        if state is None:
            return cls()
        next_offset, pending, early = state
        return cls(int(next_offset), set(pending), set(early))


class WatermarkBoard:
    """This process's published watermarks ({partition: offset}), written by the partition
    owners on the worker threads and read by the publisher or an in-process API."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marks: dict[str, int] = {}

    def set(self, partition: int, watermark: int) -> None:
        with self._lock:
            self._marks[str(partition)] = watermark

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._marks)


class WatermarkTracker:
    """A single-threaded view over `PartitionProgress` per partition, for callers outside a
    dataflow (benchmarks, tests): read, finish, and ask for the watermarks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[int, PartitionProgress] = {}

    def _part(self, partition: int) -> PartitionProgress:
        return self._parts.setdefault(partition, PartitionProgress())

    def read(self, partition: int, offsets: Iterable[int], next_offset: int) -> None:
        with self._lock:
            self._part(partition).apply(ReadNotice(partition, tuple(offsets), next_offset))

    def done_many(self, items: Iterable[tuple[int, int]]) -> None:
        with self._lock:
            for finished in finished_by_partition(items):
                self._part(finished.partition).apply(finished)

    def done(self, partition: int, offset: int) -> None:
        self.done_many([(partition, offset)])

    def in_flight(self) -> int:
        with self._lock:
            return sum(len(p.pending) for p in self._parts.values())

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {str(p): part.watermark() for p, part in self._parts.items()}
