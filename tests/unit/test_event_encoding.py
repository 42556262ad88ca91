"""The one encoder of native change events: what it writes, `parse_record` reads back unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from freshrag.ingest.events import (
    MAX_TITLE_LENGTH,
    Delete,
    RawRecord,
    RecordOrigin,
    Upsert,
    delete_event,
    document_key,
    encode_event,
    native_event,
    parse_record,
    upsert_event,
)
from freshrag.ingest.validation import MAX_VERSION

ORIGIN = RecordOrigin("documents", 1, 7, 1_764_331_200_000)

non_blank = st.text(min_size=1, max_size=40).filter(lambda s: bool(s.strip()))
tenants = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
versions = st.integers(min_value=0, max_value=MAX_VERSION)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
instants = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 31), timezones=zones
)
scalars = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
metadata = st.dictionaries(
    st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    st.one_of(scalars, st.lists(scalars, max_size=4)),
    max_size=5,
)
upserts = st.builds(
    Upsert,
    tenant=tenants,
    doc_id=non_blank,
    version=versions,
    title=st.text(max_size=MAX_TITLE_LENGTH // 20),
    text=non_blank,
    updated_at=instants,
    origin=st.just(ORIGIN),
    url=st.none() | st.text(max_size=60),
    source=st.none() | st.text(max_size=30),
    metadata=metadata,
)
deletes = st.builds(
    Delete,
    tenant=tenants,
    doc_id=non_blank,
    version=st.none() | versions,
    origin=st.just(ORIGIN),
)


def reparse(event: dict[str, object]) -> object:
    key, value = encode_event(event)
    return parse_record(RawRecord(key, value, ORIGIN))


@settings(max_examples=300, deadline=None)
@given(upserts | deletes)
def test_encode_then_parse_gives_the_same_event(event: Upsert | Delete) -> None:
    assert reparse(native_event(event)) == event


@given(non_blank, st.none() | tenants)
def test_the_record_is_keyed_by_tenant_and_document_id(doc_id: str, tenant: str | None) -> None:
    """Issue 15: the key names the document across tenants (the default tenant when the event
    names none), so a compacted topic keeps every tenant's document."""
    key, value = encode_event(upsert_event(doc_id, "text", tenant=tenant))
    assert json.loads(key) == {"id": doc_id, "tenant": tenant or "default"}
    assert key == document_key(tenant, doc_id)
    assert json.loads(value)["id"] == doc_id
    gone_key, _ = encode_event(delete_event(doc_id, tenant=tenant))
    assert gone_key == key  # an upsert and a delete of one document share the key


def test_fields_left_out_take_the_readers_defaults() -> None:
    event = reparse(upsert_event("kb-1", "Refunds within 30 days."))
    assert isinstance(event, Upsert)
    assert (event.tenant, event.version, event.explicit_version) == (
        "default",
        ORIGIN.timestamp_ms,
        False,
    )
    assert event.updated_at == datetime.fromtimestamp(ORIGIN.timestamp_ms / 1000, tz=UTC)
    gone = reparse(delete_event("kb-1", tenant="acme"))
    assert gone == Delete("acme", "kb-1", None, ORIGIN)


def test_values_are_not_checked_here_but_by_the_reader() -> None:
    dead = reparse(upsert_event("kb-1", "   ", version=-1))
    assert getattr(dead, "step", None) == "parse"
