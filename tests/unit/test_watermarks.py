"""Watermarks advance only past offsets whose records are final, whatever order they finish in."""

from __future__ import annotations

from freshrag.ingest.watermarks import WatermarkTracker


def test_watermark_waits_for_the_oldest_record_in_flight() -> None:
    t = WatermarkTracker()
    assert t.snapshot() == {}
    t.read(0, [0, 1, 2], next_offset=3)
    t.read(1, [5], next_offset=6)  # partition 1 resumed from a snapshot at 5
    assert t.snapshot() == {"0": 0, "1": 5}
    t.done(0, 2)
    t.done(0, 1)
    assert t.snapshot()["0"] == 0  # offset 0 still in flight
    t.done(0, 0)
    assert t.snapshot() == {"0": 3, "1": 5}
    t.done_many([(1, 5)])
    assert t.snapshot() == {"0": 3, "1": 6}


def test_gaps_in_offsets_do_not_block() -> None:
    t = WatermarkTracker()
    t.read(0, [10, 14], next_offset=15)  # 11-13 were compacted away
    t.done(0, 10)
    assert t.snapshot() == {"0": 14}
    t.done(0, 14)
    assert t.snapshot() == {"0": 15}
    t.read(0, [], next_offset=20)  # idle polls move the position only
    assert t.snapshot() == {"0": 20}


# --- the cluster's owner: read notices and finished offsets arrive by different routes -------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from freshrag.ingest.watermarks import (  # noqa: E402
    Finished,
    PartitionProgress,
    ReadNotice,
    finished_by_partition,
)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[ReadNotice | Finished], int]:
    """Offsets read in batches (with gaps, as compaction leaves), each finished exactly once by
    some worker; the owner receives the notices and the finishes in any interleaving that keeps
    each route in order, and a finish may overtake its own read notice."""
    sizes = draw(st.lists(st.integers(0, 5), min_size=1, max_size=8))
    gaps = draw(st.lists(st.integers(0, 2), min_size=sum(sizes), max_size=sum(sizes)))
    offset, gap_i = 0, 0
    notices: list[ReadNotice] = []
    all_offsets: list[int] = []
    for size in sizes:
        batch = []
        for _ in range(size):
            offset += gaps[gap_i]
            gap_i += 1
            batch.append(offset)
            offset += 1
        tail = draw(st.integers(0, 2))  # a transaction marker or compacted tail
        notices.append(ReadNotice(0, tuple(batch), offset + tail))
        offset += tail
        all_offsets.extend(batch)
    finish_order = draw(st.permutations(all_offsets))
    groups: list[Finished] = []
    i = 0
    while i < len(finish_order):
        n = draw(st.integers(1, 3))
        groups.append(Finished(0, tuple(finish_order[i : i + n])))
        i += n
    # interleave the two routes, each in its own order
    merged: list[ReadNotice | Finished] = []
    a, b = list(notices), list(groups)
    while a or b:
        if a and (not b or draw(st.booleans())):
            merged.append(a.pop(0))
        else:
            merged.append(b.pop(0))
    return merged, offset


@settings(max_examples=300, deadline=None)
@given(deliveries(), st.data())
def test_owner_watermark_is_exact_in_any_interleaving(
    case: tuple[list[ReadNotice | Finished], int], data: st.DataObject
) -> None:
    items, end = case
    owner = PartitionProgress()
    read: set[int] = set()
    finished: set[int] = set()
    for item in items:
        if data.draw(st.booleans(), label="snapshot and restore here"):
            owner = PartitionProgress.from_state(owner.to_state())
        owner.apply(item)
        if isinstance(item, ReadNotice):
            read |= set(item.offsets)
        else:
            finished |= set(item.offsets)
        mark = owner.watermark()
        # safety: every record read below the watermark is final (a token below it is safe)
        assert all(o in finished for o in read if o < mark), (mark, read - finished)
    # liveness: once everything is final the watermark reaches the read position
    assert owner.watermark() == end
    assert not owner.pending and not owner.early


def test_finished_groups_by_partition_once() -> None:
    got = finished_by_partition([(1, 5), (0, 3), (1, 4), (1, 5)])
    assert got == [Finished(0, (3,)), Finished(1, (4, 5))]
