"""Parsing of native, Debezium and tombstone events; every bad input becomes a DeadLetter."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from freshrag.ingest.events import (
    DeadLetter,
    DebeziumMapping,
    Delete,
    EventLimits,
    RawRecord,
    RecordOrigin,
    Upsert,
    parse_record,
)

ORIGIN = RecordOrigin("documents", 2, 41, 1_764_331_200_000)


def rec(value: object, key: bytes | None = b"kb-1") -> RawRecord:
    raw = value if value is None or isinstance(value, bytes) else json.dumps(value).encode()
    return RawRecord(key, raw, ORIGIN)


def test_native_upsert_with_all_fields() -> None:
    event = parse_record(
        rec(
            {
                "op": "upsert",
                "id": "kb-42",
                "tenant": "acme",
                "version": 7,
                "title": "Refund policy",
                "text": "Refunds within 30 days.",
                "url": "https://example.com/kb/42",
                "source": "cms",
                "metadata": {"lang": "en", "team": "billing"},
                "updated_at": "2026-11-28T12:00:00Z",
            }
        )
    )
    assert isinstance(event, Upsert)
    assert (event.tenant, event.doc_id, event.version) == ("acme", "kb-42", 7)
    assert event.updated_at == datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert event.metadata == {"lang": "en", "team": "billing"}
    assert event.doc_key == "acme/kb-42"


def test_native_defaults_tenant_version_updated_at_from_record() -> None:
    event = parse_record(rec({"op": "upsert", "id": "a", "text": "hello"}))
    assert isinstance(event, Upsert)
    assert event.tenant == "default"
    assert event.version == ORIGIN.timestamp_ms
    assert event.updated_at == datetime.fromtimestamp(ORIGIN.timestamp_ms / 1000, tz=UTC)


def test_native_delete() -> None:
    event = parse_record(rec({"op": "delete", "id": "kb-42", "tenant": "acme", "version": 8}))
    assert event == Delete("acme", "kb-42", 8, ORIGIN)


def test_tombstone_deletes_by_plain_and_json_key() -> None:
    # no version: it deletes whatever is indexed, and never raises the version bar (issue 9)
    plain = parse_record(rec(None, key=b"kb-9"))
    assert plain == Delete("default", "kb-9", None, ORIGIN, tenant_known=False, row_identity=True)
    debezium_key = json.dumps({"schema": {}, "payload": {"id": 42}}).encode()
    keyed = parse_record(rec(None, key=debezium_key))
    assert isinstance(keyed, Delete) and keyed.doc_id == "42" and not keyed.tenant_known
    with_tenant = parse_record(rec(None, key=json.dumps({"id": 42, "tenant": "acme"}).encode()))
    assert isinstance(with_tenant, Delete) and with_tenant.tenant_known
    assert with_tenant.tenant == "acme" and with_tenant.version is None


def test_a_version_less_native_delete_has_no_version() -> None:
    event = parse_record(rec({"op": "delete", "id": "kb-42", "tenant": "acme"}))
    assert event == Delete("acme", "kb-42", None, ORIGIN)


def test_a_key_only_debezium_before_image_names_no_tenant() -> None:
    body = {"op": "d", "before": {"id": 42}, "after": None}
    event = parse_record(rec(body))
    assert isinstance(event, Delete) and not event.tenant_known and event.row_identity


@pytest.mark.parametrize("wrapped", [False, True])
def test_debezium_create_update_read_delete(wrapped: bool) -> None:
    row = {
        "id": 5,
        "title": "T",
        "text": "Body text",
        "lang": "de",
        "updated_at": 1_764_331_200_000,
    }

    def env(op: str, before: object, after: object) -> dict[str, object]:
        payload = {"op": op, "before": before, "after": after, "source": {"table": "kb"}}
        return {"schema": {"type": "struct"}, "payload": payload} if wrapped else payload

    for op in ("c", "r", "u"):
        event = parse_record(rec(env(op, None, row)))
        assert isinstance(event, Upsert), event
        assert event.doc_id == "5" and event.text == "Body text" and event.title == "T"
        assert event.metadata == {"lang": "de"}
        assert event.source == "debezium"
        assert event.updated_at == datetime(2025, 11, 28, 12, tzinfo=UTC)
    deleted = parse_record(rec(env("d", row, None)))
    assert isinstance(deleted, Delete) and deleted.doc_id == "5"


def test_debezium_field_mapping() -> None:
    mapping = DebeziumMapping(
        id_field="article_id", text_field="body", title_field="headline", metadata_fields=["lang"]
    )
    row = {"article_id": "a-1", "body": "B", "headline": "H", "lang": "en", "secret": "x"}
    event = parse_record(rec({"op": "c", "before": None, "after": row}), mapping=mapping)
    assert isinstance(event, Upsert)
    assert (event.doc_id, event.text, event.title) == ("a-1", "B", "H")
    assert event.metadata == {"lang": "en"}


BAD = [
    (b"{not json", "InvalidJSON", "not JSON"),
    (b"\xff\xfe\x00bad", "InvalidEncoding", "not UTF-8"),
    (json.dumps([1, 2]).encode(), "WrongType", "JSON object"),
    (json.dumps({"op": "upsert", "text": "x"}).encode(), "MissingField", "'id'"),
    (json.dumps({"op": "upsert", "id": "a"}).encode(), "MissingField", "'text'"),
    (
        json.dumps({"op": "upsert", "id": 5, "text": "x"}).encode(),
        "WrongType",
        "'id' must be a string",
    ),
    (json.dumps({"op": "upsert", "id": "a", "text": 3}).encode(), "WrongType", "'text'"),
    (
        json.dumps({"op": "upsert", "id": "a", "text": "x", "version": "7"}).encode(),
        "WrongType",
        "'version'",
    ),
    (json.dumps({"op": "merge", "id": "a", "text": "x"}).encode(), "UnknownOp", "'merge'"),
    (json.dumps({"id": "a", "text": "x"}).encode(), "MissingField", "'op'"),
    (json.dumps({"op": "upsert", "id": "a", "text": "   "}).encode(), "EmptyText", "empty"),
    (
        json.dumps({"op": "upsert", "id": "a", "text": "x", "tenant": "a b"}).encode(),
        "InvalidTenant",
        "tenant",
    ),
    (
        json.dumps({"op": "upsert", "id": "a", "text": "x", "updated_at": "yesterday"}).encode(),
        "InvalidTimestamp",
        "ISO 8601",
    ),
    (
        json.dumps({"op": "upsert", "id": "a", "text": "x", "metadata": {"k": {"n": 1}}}).encode(),
        "WrongType",
        "metadata 'k'",
    ),
]


@pytest.mark.parametrize(("value", "error_class", "fragment"), BAD)
def test_bad_events_become_dead_letters(value: bytes, error_class: str, fragment: str) -> None:
    dead = parse_record(RawRecord(b"k", value, ORIGIN))
    assert isinstance(dead, DeadLetter)
    assert dead.error_class == error_class
    assert fragment in dead.message
    assert dead.value == value and dead.key == b"k"  # original bytes kept
    headers = dict(dead.headers())
    assert headers["freshrag.error.class"] == error_class.encode()
    assert headers["freshrag.error.step"] == b"parse"
    assert headers["freshrag.source.offset"] == b"41"
    assert headers["freshrag.source.partition"] == b"2"


def test_oversized_document_is_rejected_before_parsing() -> None:
    big = json.dumps({"op": "upsert", "id": "a", "text": "x" * 2000}).encode()
    dead = parse_record(RawRecord(b"a", big, ORIGIN), limits=EventLimits(max_document_bytes=1000))
    assert isinstance(dead, DeadLetter) and dead.error_class == "DocumentTooLarge"


def test_tombstone_without_key_is_dead_letter() -> None:
    dead = parse_record(RawRecord(None, None, ORIGIN))
    assert isinstance(dead, DeadLetter) and dead.error_class == "MissingKey"


def test_debezium_automatic_metadata_drops_unstorable_columns_not_the_row() -> None:
    row = {
        "id": 1,
        "text": "The row's text.",
        "lang": "en",
        "notes": "x" * 5_000,  # longer than a metadata string may be
        "Order Date": "2026-11-29",  # a column name that is no filter path
        **{f"c{i}": i for i in range(100)},  # more columns than metadata keys
    }
    event = parse_record(rec({"op": "c", "before": None, "after": row}))
    assert isinstance(event, Upsert)
    assert event.metadata["lang"] == "en"
    assert "notes" not in event.metadata and "Order Date" not in event.metadata
    assert len(event.metadata) == 64


def test_an_absurd_record_timestamp_is_no_version() -> None:
    far = RecordOrigin("documents", 0, 0, 2**60)
    record = RawRecord(b"k", json.dumps({"op": "upsert", "id": "k", "text": "t"}).encode(), far)
    dead = parse_record(record)
    assert isinstance(dead, DeadLetter) and dead.error_class == "NumberOutOfRange"
