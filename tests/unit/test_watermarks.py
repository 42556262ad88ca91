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
