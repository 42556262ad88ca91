"""The expected-index model used by the crash and outage tests (pure): the ordering rules of
DESIGN.md "Change events", the report's four figures."""

from __future__ import annotations

import json
import random
from typing import Any

from tests.integration.harness import (
    LogRecord,
    compare_index,
    dead_letter_positions,
    expected_documents,
    mixed_events,
)

TS = 1_790_000_000_000


def log(*events: dict[str, Any] | bytes | None, ts: list[int] | None = None) -> list[LogRecord]:
    out = []
    for offset, e in enumerate(events):
        value = None if e is None else e if isinstance(e, bytes) else json.dumps(e).encode()
        stamp = ts[offset] if ts else TS + offset
        out.append(LogRecord(0, offset, stamp, b"d1", value))
    return out


def up(version: int | None = None, text: str = "t", **extra: Any) -> dict[str, Any]:
    e = {"op": "upsert", "id": "d1", "text": text, **extra}
    return e if version is None else {**e, "version": version}


def delete(version: int | None = None, **extra: Any) -> dict[str, Any]:
    e = {"op": "delete", "id": "d1", **extra}
    return e if version is None else {**e, "version": version}


def state(records: list[LogRecord]) -> dict[tuple[str, str], tuple[int, str]]:
    return {k: (d.version, d.text) for k, d in expected_documents(records).items()}


def test_versionless_delete_does_not_raise_the_bar() -> None:
    assert state(log(up(3), delete(), up(4, "four"))) == {("default", "d1"): (4, "four")}
    # a tombstone (bare key) likewise, and a replay of v3 after it is applied again
    assert state(log(up(3, "x"), None, up(3, "x"))) == {("default", "d1"): (3, "x")}


def test_same_version_delete_later_in_the_log_wins() -> None:
    assert state(log(up(5), delete(5))) == {}
    assert state(log(delete(6), up(5))) == {}  # an older upsert after the delete is stale
    # equal explicit versions: anything but a delete of a live document is a replay
    assert state(log(delete(5), up(5))) == {}
    assert state(log(up(7), delete(7), up(7))) == {}
    assert state(log(up(5, "a"), up(5, "b"))) == {("default", "d1"): (5, "a")}
    assert state(log(up(5), delete(4))) == {("default", "d1"): (5, "t")}


def test_versionless_upserts_order_by_timestamp_then_offset() -> None:
    same_ms = log(up(None, "first"), up(None, "second"), ts=[TS, TS])
    assert state(same_ms) == {("default", "d1"): (TS, "second")}
    # a version-less delete takes the last version; an equal explicit version after it wins
    assert state(log(up(9, "a"), delete(), up(9, "b"))) == {("default", "d1"): (9, "b")}
    # an explicit small version after a timestamp-versioned one is stale
    assert state(log(up(None, "ts"), up(7, "seven"))) == {("default", "d1"): (TS, "ts")}


def test_out_of_order_and_replays_never_regress() -> None:
    records = log(up(2, "two"), up(1, "one"), up(3, "three"), up(2, "two"))
    assert state(records) == {("default", "d1"): (3, "three")}


def test_tenants_and_bad_records() -> None:
    records = log(
        up(1, "a", tenant="acme"),
        b"{not json",
        up(2, "x", tenant="bad tenant"),
        up(2**60, "huge"),
        delete(None, tenant="globex"),
    )
    assert state(records) == {("acme", "d1"): (1, "a")}
    assert dead_letter_positions(records) == {(0, 1), (0, 2), (0, 3)}
    # a bare-key tombstone of a native document names the default tenant
    assert state([*records, LogRecord(0, 9, TS, b"d1", None)]) == {("acme", "d1"): (1, "a")}
    assert state(log(up(2, "x"), None)) == {}


def test_report_counts_each_kind_of_divergence() -> None:
    def point(doc: str, version: int, index: int, count: int) -> dict[str, Any]:
        return {
            "tenant": "t",
            "doc_id": doc,
            "version": version,
            "chunk_index": index,
            "chunk_count": count,
        }

    expected = {("t", "a"): (2, 2), ("t", "b"): (1, 1), ("t", "c"): (3, 1)}
    payloads = [
        point("a", 2, 0, 2),  # a: chunk 1 missing
        point("b", 1, 0, 1),
        point("b", 1, 0, 1),  # b: a duplicate
        point("c", 2, 0, 1),  # c: regressed (and stale, and missing at v3)
        point("d", 1, 0, 1),  # d: deleted, still there
    ]
    report = compare_index(expected, payloads)
    assert (report.missing, report.stale, report.duplicates, report.regressed) == (2, 2, 1, 1)
    assert not report.exact
    exact = [point("a", 2, 0, 2), point("a", 2, 1, 2), point("b", 1, 0, 1), point("c", 3, 0, 1)]
    assert compare_index(expected, exact).exact


def test_generator_is_seeded_and_mixed() -> None:
    first = mixed_events(random.Random(7), 500, 60)
    assert first == mixed_events(random.Random(7), 500, 60)
    assert len(first) >= 500
    ops = [json.loads(v).get("op") if v and v.startswith(b'{"op') else v for _, v in first]
    assert ops.count("upsert") > 200 and ops.count("delete") > 20 and None in ops
    assert len(set(first)) < len(first)  # replays
