"""Property tests of parse_record: any input becomes an event the index can store, or a DeadLetter.

The `storable` check restates, independently of `freshrag.ingest.validation`, what Qdrant
(Edge and server) was seen to reject or to break on: non-finite numbers, integers beyond int64,
lone surrogates, nested payloads (a depth of ~126 corrupts reads of the shard), and metadata keys
that are not valid filter path parts.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrag.ingest.events import (
    DeadLetter,
    DebeziumMapping,
    Delete,
    EventLimits,
    Ignored,
    RawRecord,
    RecordOrigin,
    Upsert,
    parse_record,
)

ORIGIN = RecordOrigin("documents", 0, 1, 1_764_331_200_000)
LIMITS = EventLimits(max_document_bytes=200_000)
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INT64 = (-(2**63), 2**63 - 1)
FILTER_KEY = re.compile(r"^[\w-]{1,128}$")

# -- what the index can store ------------------------------------------------------------------


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _storable_scalar(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return INT64[0] <= value <= INT64[1]
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return _utf8(value) and len(value) <= 2_048
    return False


def storable(event: Upsert) -> bool:
    """True if every field of the upsert can be written to Qdrant and filtered on."""
    strings = [event.tenant, event.doc_id, event.title, event.text, event.url, event.source]
    if not all(s is None or (isinstance(s, str) and _utf8(s)) for s in strings):
        return False
    if isinstance(event.version, bool) or not 0 <= event.version <= 2**53:
        return False
    if event.updated_at.tzinfo is None:
        return False
    meta = event.metadata
    if not isinstance(meta, dict) or len(meta) > 64:
        return False
    for key, value in meta.items():
        if not (isinstance(key, str) and FILTER_KEY.match(key)):
            return False
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > 256:
            return False
        if not all(_storable_scalar(v) for v in items):
            return False
    payload = {
        "tenant": event.tenant,
        "doc_id": event.doc_id,
        "version": event.version,
        "text": event.text,
        "title": event.title,
        "url": event.url,
        "source": event.source,
        "updated_at": event.updated_at.isoformat(),
        "metadata": dict(meta),
    }
    encoded = json.dumps(payload, allow_nan=False, ensure_ascii=False).encode("utf-8")
    return len(json.dumps(dict(meta), ensure_ascii=False).encode()) <= 16_384 and bool(encoded)


def check(record: RawRecord, mapping: DebeziumMapping | None = None) -> Any:
    result = parse_record(record, LIMITS, mapping)  # must never raise
    assert isinstance(result, Upsert | Delete | DeadLetter | Ignored)
    if isinstance(result, Ignored):  # only a repair's replay key, cleared by a tombstone
        assert record.value is None and record.key is not None
        assert json.loads(record.key)["replay"] is True
        return result
    if isinstance(result, DeadLetter):
        assert result.error_class and result.message.strip()
        assert result.step == "parse"
        assert (result.key, result.value) == (record.key, record.value)  # the original bytes
        for name, value in result.headers():  # the reason can be sent as Kafka headers
            assert name and isinstance(value, bytes)
    elif isinstance(result, Upsert):
        assert storable(result), result
    else:
        assert _utf8(result.tenant) and _utf8(result.doc_id)
        assert result.version is None or 0 <= result.version <= 2**53
    return result


NAN_UPSERT = Upsert("default", "a", 1, "", "t", datetime.now(UTC), ORIGIN, metadata={"x": math.nan})

# -- strategies --------------------------------------------------------------------------------

EDGE_CHARS = ["\ud800", "\udfff", "\x00", "\u202e", "\u200f", "\ufeff", "\uffff", "😀", ".", '"']
edgy_text = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(EDGE_CHARS)), max_size=40)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**62, max_value=2**80),
    st.integers(min_value=-(2**80), max_value=-(2**62)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, edgy_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(edgy_text, inner, max_size=4)
    ),
    max_leaves=20,
)
meta_keys = st.one_of(
    edgy_text,
    st.sampled_from(["lang", "a.b", 'a["b', "a b", "", "x" * 129, "é", "a-b_c", "a]", "k\x00"]),
)
near_limits = st.one_of(  # metadata around each size limit, cheap to generate
    st.integers(60, 68).map(lambda n: {f"k{i}": i for i in range(n)}),
    st.integers(250, 260).map(lambda n: {"k": list(range(n))}),
    st.integers(2_040, 2_056).map(lambda n: {"k": "x" * n}),
    st.integers(7, 9).map(lambda n: {f"k{i}": "é" * 1_000 for i in range(n)}),
    st.integers(125, 131).map(lambda n: {"k" * n: 1}),
)
metadata = st.one_of(
    st.none(),
    json_values,
    st.dictionaries(meta_keys, json_values, max_size=6),
    near_limits,
)


def dumps(value: Any, ascii_only: bool) -> bytes:
    """JSON bytes as a producer might write them: NaN literals allowed; surrogates as escapes
    (ascii) or as the invalid UTF-8 that `surrogatepass` writes."""
    return json.dumps(value, allow_nan=True, ensure_ascii=ascii_only).encode(
        "utf-8", "surrogatepass"
    )


native_events = st.fixed_dictionaries(
    {},
    optional={
        "op": st.one_of(st.sampled_from(["upsert", "delete"]), json_values),
        "id": st.one_of(edgy_text.filter(bool), json_values),
        "tenant": st.one_of(st.sampled_from(["acme", "t-1"]), json_values),
        "version": st.one_of(numbers, json_values),
        "title": st.one_of(edgy_text, json_values),
        "text": st.one_of(edgy_text.filter(str.strip), json_values),
        "url": st.one_of(st.none(), edgy_text),
        "source": st.one_of(st.none(), edgy_text),
        "updated_at": st.one_of(
            st.none(), numbers, st.sampled_from(["2026-01-01T00:00:00Z", "soon", "0001-01-01"])
        ),
        "metadata": metadata,
        "replay": st.one_of(st.booleans(), json_values),
        "replay_of": st.one_of(st.integers(min_value=-2, max_value=2**64), json_values),
    },
)

rows = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(), edgy_text, json_values)},
    optional={
        "text": st.one_of(edgy_text, json_values),
        "title": st.one_of(edgy_text, json_values),
        "tenant": st.one_of(st.sampled_from(["acme"]), json_values),
        "rev": st.one_of(numbers, json_values),
        "updated_at": st.one_of(numbers, edgy_text),
        "lang": json_values,
        "col": json_values,
    },
    # any other column becomes metadata when metadata_fields is None
).flatmap(
    lambda row: st.dictionaries(meta_keys, json_values, max_size=4).map(lambda x: {**x, **row})
)

debezium_events = st.builds(
    lambda op, before, after, wrapped: (
        {"schema": {"type": "struct"}, "payload": {"op": op, "before": before, "after": after}}
        if wrapped
        else {"op": op, "before": before, "after": after, "ts_ms": 1}
    ),
    st.sampled_from(["c", "r", "u", "d"]),
    st.one_of(st.none(), rows),
    st.one_of(st.none(), rows),
    st.booleans(),
)
mappings = st.sampled_from(
    [
        DebeziumMapping(),
        DebeziumMapping(version_field="rev", metadata_fields=["lang", "col"]),
    ]
)


# -- properties --------------------------------------------------------------------------------


TOKENS = ["NaN", "Infinity", "-Infinity", "1e999", "9" * 30, '"\\ud800"', "[", "]", "{", "}"]
TOKENS += [",", ":", '"k"', "1", "true", "null", '"a.b"', '"x"', "-1"]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=12).map(lambda t: "".join(t).encode())


@FUZZ
@given(
    inner=st.one_of(st.binary(max_size=2_000), token_soup),
    where=st.sampled_from(["whole", "metadata", "metadata value", "version", "text"]),
    key=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_random_bytes(inner: bytes, where: str, key: bytes | None) -> None:
    """Random bytes and JSON token soup, alone or spliced into a valid event."""
    head = b'{"op":"upsert","id":"a","text":"hello",'
    value = {
        "whole": inner,
        "metadata": head + b'"metadata":' + inner + b"}",
        "metadata value": head + b'"metadata":{"k":' + inner + b"}}",
        "version": head + b'"version":' + inner + b"}",
        "text": b'{"op":"upsert","id":"a","text":' + inner + b"}",
    }[where]
    check(RawRecord(key, value, ORIGIN))


@FUZZ
@given(
    value=json_values,
    where=st.sampled_from(["whole", "metadata", "metadata value", "version", "id", "text"]),
    ascii_only=st.booleans(),
)
def test_any_json_value(value: Any, where: str, ascii_only: bool) -> None:
    """Any JSON value (NaN, huge ints, surrogates, nesting), alone or in an event's field."""
    event: dict[str, Any] = {"op": "upsert", "id": "a", "text": "hello"}
    body = {
        "whole": value,
        "metadata": {**event, "metadata": value},
        "metadata value": {**event, "metadata": {"k": value}},
        "version": {**event, "version": value},
        "id": {**event, "id": value},
        "text": {**event, "text": value},
    }[where]
    check(RawRecord(b"k", dumps(body, ascii_only), ORIGIN))


@FUZZ
@given(body=native_events, ascii_only=st.booleans())
def test_native_events(body: dict[str, Any], ascii_only: bool) -> None:
    assert not storable(NAN_UPSERT)  # the oracle itself can say no
    check(RawRecord(b"k", dumps(body, ascii_only), ORIGIN))


@FUZZ
@given(body=debezium_events, mapping=mappings, ascii_only=st.booleans())
def test_debezium_envelopes(
    body: dict[str, Any], mapping: DebeziumMapping, ascii_only: bool
) -> None:
    check(RawRecord(b"k", dumps(body, ascii_only), ORIGIN), mapping)


@FUZZ
@given(
    key=st.one_of(
        st.binary(max_size=64),
        json_values.map(lambda v: dumps(v, True)),
        st.fixed_dictionaries(
            {"id": st.one_of(edgy_text, json_values, st.sampled_from(["\ud800", "a\udfff"]))}
        ).map(lambda v: dumps(v, True)),
        st.fixed_dictionaries(  # replay keys, right and nearly right
            {
                "id": st.one_of(edgy_text, json_values),
                "replay": st.one_of(st.just(True), json_values),
                "tenant": st.one_of(st.sampled_from(["acme"]), json_values),
            }
        ).map(lambda v: dumps(v, True)),
    )
)
def test_tombstones(key: bytes) -> None:
    check(RawRecord(key, None, ORIGIN))


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    depth=st.integers(1, 30_000),
    opener=st.sampled_from(["[", '{"a":']),
    where=st.sampled_from(["top", "metadata", "text"]),
)
def test_deep_json(depth: int, opener: str, where: str) -> None:
    closer = "]" if opener == "[" else "}"
    deep = opener * depth + "1" + closer * depth
    text = {
        "top": deep,
        "metadata": '{"op":"upsert","id":"a","text":"x","metadata":{"k":' + deep + "}}",
        "text": '{"op":"upsert","id":"a","text":' + deep + "}",
    }[where]
    result = check(RawRecord(b"k", text.encode(), ORIGIN))
    if where == "metadata" and depth == 1 and opener == "[":
        assert isinstance(result, Upsert)  # {"k": [1]} is flat metadata
    else:  # a clear reason, not the name of an exception such as RecursionError
        assert isinstance(result, DeadLetter)
        assert result.error_class in {"TooDeep", "WrongType", "MissingField"}, result


@FUZZ
@given(
    literal=st.one_of(
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"]),
        st.integers(min_value=2**63, max_value=10**4000).map(str),
        st.integers(min_value=20, max_value=100_000).map(lambda n: "9" * n),
        st.integers(min_value=-(10**40), max_value=-(2**63) - 1).map(str),
    ),
    field=st.sampled_from(["version", "metadata", "list", "updated_at"]),
)
def test_huge_and_non_finite_numbers_never_reach_the_index(literal: str, field: str) -> None:
    value = {
        "version": f'"version":{literal}',
        "metadata": f'"metadata":{{"n":{literal}}}',
        "list": f'"metadata":{{"n":[1,{literal}]}}',
        "updated_at": f'"updated_at":{literal}',
    }[field]
    text = '{"op":"upsert","id":"a","text":"hello",' + value + "}"
    result = check(RawRecord(b"k", text.encode(), ORIGIN))
    assert isinstance(result, DeadLetter)
    allowed = {"NonFiniteNumber", "NumberOutOfRange", "InvalidTimestamp"}
    if field == "version" and literal.startswith("-"):
        allowed.add("WrongType")  # "must be >= 0"
    assert result.error_class in allowed, result


@FUZZ
@given(
    char=st.sampled_from(["\\ud800", "\\udfff", "\\udc00\\ud800", "\\ud83d\\ude00"]),
    field=st.sampled_from(["id", "text", "title", "url", "source", "meta_value", "meta_key"]),
)
def test_lone_surrogates_are_dead_lettered(char: str, field: str) -> None:
    """A lone surrogate escape is refused in any field; a valid pair (an emoji) is kept."""
    s = f'"x{char}y"'
    body = {
        "id": f'"id":{s},"text":"t"',
        "text": f'"id":"a","text":{s}',
        "title": f'"id":"a","text":"t","title":{s}',
        "url": f'"id":"a","text":"t","url":{s}',
        "source": f'"id":"a","text":"t","source":{s}',
        "meta_value": f'"id":"a","text":"t","metadata":{{"k":{s}}}',
        "meta_key": f'"id":"a","text":"t","metadata":{{{s}:1}}',
    }[field]
    text = '{"op":"upsert",' + body + "}"
    result = check(RawRecord(b"k", text.encode(), ORIGIN))
    pair = char == "\\ud83d\\ude00"
    if pair and field != "meta_key":
        assert isinstance(result, Upsert)
        assert "x😀y" in (result.doc_id, result.text, result.title, result.url, result.source) or (
            result.metadata == {"k": "x😀y"}
        )
    else:
        assert isinstance(result, DeadLetter), result
        assert result.error_class == ("InvalidMetadataKey" if pair else "InvalidUnicode")


def test_valid_unicode_edge_cases_are_indexed_unchanged() -> None:
    """NUL, RTL marks, a BOM, a non-character and an astral emoji are valid text: kept as sent,
    while the same event with a lone surrogate is dead-lettered."""
    text = "a\x00b \u202eevil\u202c \u200f\ufeff\uffff 😀 \\ud83d\\ude00"
    event = {"op": "upsert", "id": "u\u202e1", "text": text, "metadata": {"lang": "ע\x00"}}
    result = check(RawRecord(b"k", json.dumps(event).encode(), ORIGIN))
    assert isinstance(result, Upsert)
    assert result.text == text and result.doc_id == "u\u202e1"
    assert result.metadata == {"lang": "ע\x00"}
    poisoned = json.dumps({**event, "text": text + "\ud800"}).encode()
    assert isinstance(check(RawRecord(b"k", poisoned, ORIGIN)), DeadLetter)
