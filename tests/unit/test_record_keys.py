"""Record keys (issue 15): freshrag's `{"id":..,"tenant":..}` key names a document across
tenants and reads back unchanged; legacy bare-id keys and Debezium keys keep their meaning."""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrag.ingest.events import (
    MAX_ID_LENGTH,
    DebeziumMapping,
    Delete,
    DocumentKey,
    EventError,
    Ignored,
    RawRecord,
    RecordOrigin,
    document_key,
    encode_event,
    parse_key,
    parse_record,
    replay_key,
    upsert_event,
)
from freshrag.ingest.producer import partition_for

ORIGIN = RecordOrigin("documents", 0, 3, 1_764_331_200_000)
CUSTOM = DebeziumMapping(id_field="doc_pk", tenant_field="org")
NO_TENANT = DebeziumMapping(tenant_field=None)

tenants = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
# any document id the reader accepts: '/', '{', quotes, blanks, any script; no lone surrogate
# (JSON text cannot carry one, the reader refuses it)
doc_ids = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=MAX_ID_LENGTH
).filter(lambda s: bool(s.strip()))
mappings = st.sampled_from([DebeziumMapping(), CUSTOM, NO_TENANT])


def tombstone(key: bytes, mapping: DebeziumMapping | None = None) -> object:
    return parse_record(RawRecord(key, None, ORIGIN), mapping=mapping)


@settings(max_examples=400, deadline=None)
@given(tenants, doc_ids, mappings)
def test_a_key_reads_back_as_its_tenant_and_document(
    tenant: str, doc_id: str, mapping: DebeziumMapping
) -> None:
    assert parse_key(document_key(tenant, doc_id), mapping) == DocumentKey(tenant, doc_id)


@settings(max_examples=300, deadline=None)
@given(tenants, doc_ids, tenants, doc_ids)
def test_keys_are_canonical_one_per_tenant_and_document(t1: str, d1: str, t2: str, d2: str) -> None:
    """Compaction compares key bytes: equal documents give equal bytes, others differ."""
    assert (document_key(t1, d1) == document_key(t2, d2)) == ((t1, d1) == (t2, d2))
    # written the same way by the event encoder, whatever else the event holds
    assert encode_event(upsert_event(d1, "x", tenant=t1, version=9))[0] == document_key(t1, d1)


@settings(max_examples=200, deadline=None)
@given(tenants, doc_ids, mappings)
def test_a_tombstone_deletes_the_document_its_key_names(
    tenant: str, doc_id: str, mapping: DebeziumMapping
) -> None:
    gone = tombstone(document_key(tenant, doc_id), mapping)
    assert gone == Delete(tenant, doc_id, None, ORIGIN, tenant_known=True, row_identity=True)


def test_the_two_tenants_of_kb1_have_two_keys() -> None:
    acme, globex = document_key("acme", "kb-1"), document_key("globex", "kb-1")
    assert acme == b'{"id":"kb-1","tenant":"acme"}'
    assert acme != globex
    assert document_key(None, "kb-1") == b'{"id":"kb-1","tenant":"default"}'


def test_ids_that_look_like_tenants_or_json_stay_ids() -> None:
    for doc_id in ["acme/kb-1", "guide/intro.md", '{"id":"x"}', "a\\b", "naïve 文書"]:
        key = document_key("globex", doc_id)
        assert parse_key(key) == DocumentKey("globex", doc_id)
    assert "文書".encode() in document_key("t", "文書")  # readable UTF-8, not \u escapes


@given(doc_ids.filter(lambda s: not s.startswith("{")))
def test_a_legacy_bare_key_is_the_id_in_an_unknown_tenant(doc_id: str) -> None:
    """Keys written before issue 15: the whole key is the id (a '/' is part of it), and the
    tenant is not known, so the flow deletes it where the document was indexed."""
    assert parse_key(doc_id.encode()) == DocumentKey("default", doc_id, tenant_known=False)
    gone = tombstone(doc_id.encode())
    assert isinstance(gone, Delete) and (gone.doc_id, gone.tenant_known) == (doc_id, False)


@pytest.mark.parametrize(
    ("key", "mapping", "expected"),
    [
        # Debezium JSON keys: the id column, an integer id as its decimal string
        (b'{"id": 42}', None, DocumentKey("default", "42", False)),
        (
            b'{"schema": {"type": "struct"}, "payload": {"id": 42}}',
            None,
            DocumentKey("default", "42", False),
        ),
        # the mapping's tenant column in the key (a composite primary key) names the tenant
        (b'{"id": 42, "tenant": "acme"}', None, DocumentKey("acme", "42")),
        (b'{"doc_pk": 7, "org": "acme"}', CUSTOM, DocumentKey("acme", "7")),
        (b'{"doc_pk": 7}', CUSTOM, DocumentKey("default", "7", False)),
        # a key with other columns is a database key: "tenant" is no tenant without a mapping
        (
            b'{"id": 1, "tenant": "x", "region": "eu"}',
            NO_TENANT,
            DocumentKey("default", "1", False),
        ),
        # freshrag's own key is understood whatever the mapping
        (b'{"id":"kb-1","tenant":"acme"}', CUSTOM, DocumentKey("acme", "kb-1")),
        (b'{"id":"kb-1","tenant":"acme"}', NO_TENANT, DocumentKey("acme", "kb-1")),
    ],
)
def test_debezium_and_native_json_keys(
    key: bytes, mapping: DebeziumMapping | None, expected: DocumentKey
) -> None:
    assert parse_key(key, mapping) == expected


@pytest.mark.parametrize(
    ("key", "error_class"),
    [
        (b"", "MissingKey"),
        (b"\xff\xfe", "InvalidEncoding"),
        (b"{not json", "InvalidJSON"),
        (b'{"title": "no id"}', "MissingField"),
        (b'{"id": 1.5}', "WrongType"),
        (b'{"id": "kb-1", "tenant": "no/slash"}', "InvalidTenant"),
        (b'{"id": "kb-1", "tenant": 5}', "WrongType"),
        (b'{"payload": [1]}', "MissingField"),
    ],
)
def test_a_key_that_names_no_document_is_refused(key: bytes, error_class: str) -> None:
    with pytest.raises(EventError) as err:
        parse_key(key)
    assert err.value.error_class == error_class
    dead = tombstone(key)  # in the flow: dead-lettered with the same reason
    assert getattr(dead, "error_class", None) == ("MissingKey" if key == b"" else error_class)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=80).map(str.encode))
def test_any_key_bytes_give_a_document_or_an_event_error(key: bytes) -> None:
    try:
        parsed = parse_key(key)
    except EventError:
        return
    assert parsed.doc_id.strip() and len(parsed.doc_id) <= MAX_ID_LENGTH


@given(doc_ids, st.integers(min_value=1, max_value=1000))
def test_the_partition_is_chosen_by_the_document_id(doc_id: str, partitions: int) -> None:
    """As librdkafka's default partitioner placed a bare-id key (CRC32 of the key bytes); the
    broker-side check is in tests/integration/test_compacted_topic.py."""
    part = partition_for(doc_id, partitions)
    assert 0 <= part < partitions
    assert part == zlib.crc32(doc_id.encode()) % partitions
    assert json.loads(document_key("acme", doc_id))["id"] == doc_id


@given(tenants, doc_ids, mappings)
def test_a_replay_key_names_the_document_and_its_tombstone_deletes_nothing(
    tenant: str, doc_id: str, mapping: DebeziumMapping
) -> None:
    """A repair writes its replay under a key of its own (so compaction never drops the
    document's real events for it) and clears that key with a tombstone: the tombstone must
    never read as a delete of the document, whatever the Debezium mapping."""
    key = replay_key(tenant, doc_id)
    assert key != document_key(tenant, doc_id)
    assert parse_key(key, mapping) == DocumentKey(tenant, doc_id, True, replay=True)
    cleared = parse_record(RawRecord(key, None, ORIGIN), mapping=mapping)
    assert isinstance(cleared, Ignored)
    replay = {**upsert_event(doc_id, "t", tenant=tenant, version=3), "replay": True}
    encoded_key, _ = encode_event({**replay, "replay_of": 7})
    assert encoded_key == key
    assert partition_for(doc_id, 12) == partition_for(json.loads(key)["id"], 12)


@pytest.mark.parametrize(
    ("extra", "error_class"),
    [
        ({"replay": "yes"}, "WrongType"),
        ({"replay": True}, "MissingField"),  # an upsert replay names the record it replays
        ({"replay": True, "replay_of": -1}, "WrongType"),
        ({"replay": True, "replay_of": True}, "WrongType"),
        ({"replay_of": 4}, "WrongType"),  # only with "replay": true
    ],
)
def test_malformed_replays_are_dead_lettered(extra: dict[str, object], error_class: str) -> None:
    body = {**upsert_event("a", "t", version=3), **extra}
    out = parse_record(RawRecord(b"a", json.dumps(body).encode(), ORIGIN))
    assert getattr(out, "error_class", None) == error_class, out


def test_a_replayed_delete_needs_its_version() -> None:
    body = {"op": "delete", "id": "a", "replay": True}
    out = parse_record(RawRecord(b"a", json.dumps(body).encode(), ORIGIN))
    assert getattr(out, "error_class", None) == "MissingField"
    ok = parse_record(RawRecord(b"a", json.dumps({**body, "version": 4}).encode(), ORIGIN))
    assert isinstance(ok, Delete) and ok.replay and ok.version == 4
