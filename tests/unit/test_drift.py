"""`freshrag verify`'s comparison (pure): random source logs and index states, with drift planted.

Events go through the real native path (`upsert_event`/`delete_event` -> `encode_event` ->
`parse_record`), so the source side is what the flow itself would read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from freshrag.ingest.drift import (
    DocKey,
    Drift,
    IndexedChunk,
    compare,
    layout_problem,
    repair_events,
    winning_events,
)
from freshrag.ingest.events import (
    ChangeEvent,
    DeadLetter,
    Delete,
    Ignored,
    RawRecord,
    RecordOrigin,
    Upsert,
    delete_event,
    encode_event,
    parse_record,
    upsert_event,
)
from freshrag.retrieve.contract import ChunkLayout

TOPIC = "documents"
BASE_MS = 1_800_000_000_000
DOCS = [("default", "a"), ("default", "b"), ("acme", "a"), ("acme", "c"), ("globex", "d")]


def parsed(event: dict[str, Any], offset: int, partition: int = 0) -> ChangeEvent:
    key, value = encode_event(event)
    origin = RecordOrigin(TOPIC, partition, offset, BASE_MS + offset)
    out = parse_record(RawRecord(key, value, origin))
    assert not isinstance(out, DeadLetter | Ignored), out
    return out


def log_of(ops: Sequence[tuple[int, str, int | None]]) -> list[ChangeEvent]:
    """(document, op, version or None) -> the parsed events at offsets 0, 1, ..."""
    events = []
    for offset, (d, op, version) in enumerate(ops):
        tenant, doc = DOCS[d]
        if op == "up":
            body = upsert_event(doc, f"{doc} text {offset}", tenant=tenant, version=version)
        else:
            body = delete_event(doc, tenant=tenant, version=version)
        events.append(parsed(body, offset))
    return events


def replayed(repair: Sequence[dict[str, Any]], offset: int) -> list[ChangeEvent]:
    """A repair's records as the flow reads them: each replay under its replay key, then the
    tombstone of that key (which must parse to `Ignored`, never to a delete)."""
    out: list[ChangeEvent] = []
    for event in repair:
        key, _ = encode_event(event)
        assert json.loads(key)["replay"] is True
        out.append(parsed(event, offset))
        cleared = parse_record(RawRecord(key, None, RecordOrigin(TOPIC, 0, offset + 1, BASE_MS)))
        assert isinstance(cleared, Ignored), cleared
        offset += 2
    return out


def content(event: ChangeEvent | None) -> tuple[Any, ...]:
    """What the index must hold for a winner: nothing for a delete (or no event)."""
    if not isinstance(event, Upsert):
        return ("absent",)
    return ("live", event.version, event.title, event.text, event.acl)


def chunks_of(event: Upsert) -> int:
    return 1 + (len(event.doc_id) + event.version) % 3


def consistent_index(winners: dict[DocKey, ChangeEvent]) -> dict[DocKey, list[IndexedChunk]]:
    """What the flow leaves: every live document's chunks 0..n-1 of its winning record."""
    out: dict[DocKey, list[IndexedChunk]] = {}
    for key, event in winners.items():
        if isinstance(event, Upsert):
            n = chunks_of(event)
            out[key] = [
                IndexedChunk(ChunkLayout(event.version, event.origin.offset, i, n), 0, TOPIC)
                for i in range(n)
            ]
    return out


ops_strategy = st.lists(
    st.tuples(
        st.integers(0, len(DOCS) - 1),
        st.sampled_from(["up", "up", "up", "del"]),
        st.one_of(st.none(), st.integers(0, 6)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops_strategy)
def test_an_index_the_flow_would_leave_is_clean(ops: list[tuple[int, str, int | None]]) -> None:
    winners = winning_events(log_of(ops))
    report = compare(winners, consistent_index(winners), topic=TOPIC)
    assert report.clean, report.drift
    assert report.source_documents == sum(isinstance(e, Upsert) for e in winners.values())


CORRUPTIONS = ["drop_all", "drop_chunk", "older", "newer", "mixed", "extra_chunk", "keep"]


@settings(max_examples=300, deadline=None)
@given(ops=ops_strategy, data=st.data())
def test_every_planted_drift_is_found_in_its_category(
    ops: list[tuple[int, str, int | None]], data: st.DataObject
) -> None:
    winners = winning_events(log_of(ops))
    index = consistent_index(winners)
    planted: dict[DocKey, str] = {}
    for key, event in sorted(winners.items()):
        points = index.get(key, [])
        if isinstance(event, Delete):
            if data.draw(st.booleans()):  # an orphan the source deleted
                index[key] = [IndexedChunk(ChunkLayout(3, 0, 0, 1), 0, TOPIC)]
                planted[key] = "deleted"
            continue
        assert isinstance(event, Upsert)
        how = data.draw(st.sampled_from(CORRUPTIONS))
        n, v, o = len(points), event.version, event.origin.offset
        if how == "drop_all":
            del index[key]
            planted[key] = "missing"
        elif how == "drop_chunk" and n >= 2:
            drop = data.draw(st.integers(0, n - 1))
            index[key] = [p for p in points if p.layout.chunk_index != drop]
            planted[key] = "stale"
        elif how == "older" and v > 0:
            index[key] = [IndexedChunk(p.layout._replace(version=v - 1), 0) for p in points]
            planted[key] = "stale"
        elif how == "newer":
            index[key] = [IndexedChunk(p.layout._replace(version=v + 1), 0) for p in points]
            planted[key] = "stale"
        elif how == "mixed":
            index[key] = [*points, IndexedChunk(ChunkLayout(v + 7, o, n, n + 1), 0)]
            planted[key] = "stale"
        elif how == "extra_chunk":  # the tail of a longer write of the same version
            index[key] = [*points, IndexedChunk(ChunkLayout(v, o, n, n + 1), 0)]
            planted[key] = "stale"
    unknown = ("initech", "never-sent")
    if data.draw(st.booleans()):  # in the index, with no event at the source at all
        index[unknown] = [IndexedChunk(ChunkLayout(1, 0, 0, 1), 0, TOPIC)]
        planted[unknown] = "deleted"
    # one more record than read: the orphan's own (compacted away), never past the end
    end = len(ops) + 1
    report = compare(winners, index, topic=TOPIC, watermarks={0: end}, ends={0: end})
    assert {(d.tenant, d.doc_id): d.category for d in report.drift} == planted
    assert not report.in_flight
    assert report.counts() == {
        c: sum(1 for v in planted.values() if v == c) for c in ("missing", "stale", "deleted")
    }


@settings(max_examples=200, deadline=None)
@given(ops=ops_strategy, data=st.data())
def test_drift_past_the_watermark_is_in_flight_not_drift(
    ops: list[tuple[int, str, int | None]], data: st.DataObject
) -> None:
    winners = winning_events(log_of(ops))
    cut = data.draw(st.integers(0, len(ops)))
    index: dict[DocKey, list[IndexedChunk]] = {}  # nothing indexed: every live doc lacks
    report = compare(winners, index, topic=TOPIC, watermarks={0: cut}, ends={0: len(ops)})
    live = {k: e for k, e in winners.items() if isinstance(e, Upsert)}
    assert {(d.tenant, d.doc_id) for d in report.drift} == {
        k for k, e in live.items() if e.origin.offset < cut
    }
    assert {(f.tenant, f.doc_id) for f in report.in_flight} == {
        k for k, e in live.items() if e.origin.offset >= cut
    }


def test_points_written_past_the_read_end_and_touched_keys_are_in_flight() -> None:
    winners = winning_events(log_of([(0, "up", 1), (1, "up", 1)]))
    index = {
        ("default", "a"): [IndexedChunk(ChunkLayout(2, 5, 0, 1), 0, TOPIC)],  # from offset 5
        ("acme", "z"): [IndexedChunk(ChunkLayout(1, 1, 0, 1), 0, TOPIC)],
    }
    report = compare(winners, index, topic=TOPIC, ends={0: 2}, touched=[(None, "z")])
    assert {(f.tenant, f.doc_id) for f in report.in_flight} == {("default", "a"), ("acme", "z")}
    assert [(d.category, d.doc_id) for d in report.drift] == [("missing", "b")]


def test_the_winner_follows_the_flows_gate() -> None:
    # replay of an old version; equal explicit version: the later delete wins; a version-less
    # delete does not raise the bar, so a re-create with the same version wins again
    ops: list[tuple[int, str, int | None]] = [
        (0, "up", 3),
        (0, "up", 1),
        (1, "up", 2),
        (1, "del", 2),
        (2, "up", 4),
        (2, "del", None),
        (2, "up", 4),
        (3, "up", None),
        (3, "up", 2),
    ]
    events = log_of(ops)
    winners = winning_events(events)
    assert (winners[("default", "a")].version, winners[("default", "a")].origin.offset) == (3, 0)
    assert isinstance(winners[("default", "b")], Delete)
    assert isinstance(winners[("acme", "a")], Upsert)
    assert winners[("acme", "a")].origin.offset == 6
    # a version-less upsert is versioned by its timestamp: a small explicit version is older
    assert winners[("acme", "c")].origin.offset == 7


def test_a_tombstone_naming_no_tenant_deletes_the_default_tenants_document() -> None:
    events = log_of([(0, "up", 1), (2, "up", 1)])
    tomb = parse_record(RawRecord(b"a", None, RecordOrigin(TOPIC, 0, 2, BASE_MS + 2)))
    assert isinstance(tomb, Delete) and not tomb.tenant_known
    winners = winning_events([*events, tomb])
    assert isinstance(winners[("default", "a")], Delete)
    assert isinstance(winners[("acme", "a")], Upsert)


def test_layout_problems_are_named() -> None:
    ok = [ChunkLayout(2, 9, i, 3) for i in range(3)]
    assert layout_problem(ok, 2) is None
    assert "lacking [1]" in str(layout_problem([ok[0], ok[2]], 2))
    assert "older version 2" in str(layout_problem(ok, 3))
    assert "several writes" in str(layout_problem([*ok[:2], ChunkLayout(2, 11, 2, 3)], 2))


@settings(max_examples=200, deadline=None)
@given(ops=ops_strategy, data=st.data())
def test_the_gate_takes_every_repair_replay_and_it_becomes_the_winner(
    ops: list[tuple[int, str, int | None]], data: st.DataObject
) -> None:
    """A repair's replay passes the version gate even when the gate already applied the same
    explicit version, and afterwards the source's winner is the replay, with the original's
    version and content."""
    events = log_of(ops)
    winners = winning_events(events)
    index = consistent_index(winners)
    for key in list(index):
        if data.draw(st.booleans()):
            del index[key]
    for key, event in winners.items():
        if isinstance(event, Delete) and data.draw(st.booleans()):
            index[key] = [IndexedChunk(ChunkLayout(1, 0, 0, 1), 0, TOPIC)]
    report = compare(winners, index, topic=TOPIC)
    replay = replayed(repair_events(report.drift), len(events))
    after = winning_events([*events, *replay])
    for d in report.drift:
        key = (d.tenant, d.doc_id)
        new = after[key]
        assert new.origin.offset >= len(events), f"{key}: the replay was not applied"
        if d.category == "deleted":
            assert isinstance(new, Delete)
        else:
            old = winners[key]
            assert isinstance(new, Upsert) and isinstance(old, Upsert)
            assert (new.version, new.text, new.title) == (old.version, old.text, old.title)
    # an index rebuilt from the new winners is clean against them
    assert compare(after, consistent_index(after), topic=TOPIC).clean


def test_a_bare_same_version_replay_would_be_dropped_by_the_gate() -> None:
    """Why repair marks its replays: without the mark the gate takes one for a duplicate."""
    events = log_of([(0, "up", 5)])
    again = parsed(upsert_event("a", "a text 0", tenant="default", version=5), 1)
    assert winning_events([*events, again])[("default", "a")].origin.offset == 0


@settings(max_examples=300, deadline=None)
@given(ops=ops_strategy, live=ops_strategy, data=st.data())
def test_a_repair_never_undoes_a_write_that_lands_before_it(
    ops: list[tuple[int, str, int | None]],
    live: list[tuple[int, str, int | None]],
    data: st.DataObject,
) -> None:
    """The race of a repair with live writers: verify reads the log and the index, then live
    events (any documents, any versions, deletes with and without a version) land before the
    repair's records. Whatever the interleaving, every document ends exactly as if the repair
    had not been sent, but for drifted documents nobody touched, which end as the source says."""
    events = log_of(ops)
    winners = winning_events(events)
    index = consistent_index(winners)
    for key in list(index):
        if data.draw(st.booleans()):
            del index[key]  # missing
        elif data.draw(st.booleans()):
            index[key] = index[key][:-1] or [  # stale: a chunk lacking, or an older version
                IndexedChunk(ChunkLayout(0, 0, 0, 1), 0, TOPIC)
            ]
    for key, event in winners.items():
        if isinstance(event, Delete) and data.draw(st.booleans()):
            index[key] = [IndexedChunk(ChunkLayout(9, 0, 0, 1), 0, TOPIC)]  # deleted
    report = compare(winners, index, topic=TOPIC)
    later = [
        parsed(
            upsert_event(DOCS[d][1], f"live {i}", tenant=DOCS[d][0], version=v)
            if op == "up"
            else delete_event(DOCS[d][1], tenant=DOCS[d][0], version=v),
            len(events) + i,
        )
        for i, (d, op, v) in enumerate(live)
    ]
    repair = replayed(repair_events(report.drift), len(events) + len(later))
    without = winning_events([*events, *later])
    repaired = winning_events([*events, *later, *repair])
    touched = {(e.tenant, e.doc_id) for e in later}
    for key in set(without) | set(repaired) | {(d.tenant, d.doc_id) for d in report.drift}:
        if key in touched or key not in {(d.tenant, d.doc_id) for d in report.drift}:
            assert content(repaired.get(key)) == content(without.get(key)), key
        else:
            assert content(repaired.get(key)) == content(winners.get(key)), key
            assert repaired[key].origin.offset >= len(events) + len(later), "not re-applied"


def test_the_old_repair_undid_a_newer_write_that_raced_it() -> None:
    """The control: a version-less delete plus a bare replay (the repair before replay marks)
    deletes version 6 when it lands between verify and the repair."""
    events = log_of([(0, "up", 5)])
    newer = parsed(upsert_event("a", "v6", tenant="default", version=6), 1)
    old_repair = [
        parsed(delete_event("a", tenant="default"), 2),
        parsed(upsert_event("a", "a text 0", tenant="default", version=5), 3),
    ]
    assert content(winning_events([*events, newer, *old_repair])[("default", "a")]) == ("absent",)
    missing = Drift("missing", "default", "a", "not indexed", events[0])
    fixed = winning_events([*events, newer, *replayed(repair_events([missing]), 2)])
    assert content(fixed[("default", "a")])[:2] == ("live", 6)
