"""Document ACLs in change events, API key grants and the trusted principals header (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrag.api.app import create_app
from freshrag.api.auth import BadPrincipals, Unauthorized, resolve_caller
from freshrag.api.services import ApiMetrics
from freshrag.core.principals import (
    EVERYONE,
    MAX_ACL_PRINCIPALS,
    MAX_CALLER_PRINCIPALS,
    MAX_PRINCIPAL_ID_CHARS,
    NOBODY,
    PRINCIPALS_HEADER,
    parse_principal_list,
)
from freshrag.core.settings import SettingsError, load_settings
from freshrag.ingest.activity import Activity, RecentWrites
from freshrag.ingest.events import (
    DeadLetter,
    RawRecord,
    RecordOrigin,
    Upsert,
    encode_event,
    native_event,
    parse_record,
    upsert_event,
)
from freshrag.ingest.loader import detect, iter_events
from freshrag.ingest.producer import Produced
from freshrag.retrieve import contract

ORIGIN = RecordOrigin("documents", 0, 7, 1_764_331_200_000)


def parse(event: dict[str, Any]) -> Upsert | DeadLetter:
    key, value = encode_event(event)
    parsed = parse_record(RawRecord(key, value, ORIGIN))
    assert isinstance(parsed, Upsert | DeadLetter)
    return parsed


def native(acl: Any) -> dict[str, Any]:
    return {"op": "upsert", "id": "d1", "tenant": "acme", "text": "hello", "acl": acl}


# -- events -----------------------------------------------------------------------------------


def test_acl_becomes_sorted_principals() -> None:
    event = parse(native({"users": ["bob", "alice", "bob"], "groups": ["eng"]}))
    assert isinstance(event, Upsert)
    assert event.acl == ("group:eng", "user:alice", "user:bob")


@pytest.mark.parametrize("acl", [None, "absent"])
def test_no_acl_is_the_whole_tenant(acl: Any) -> None:
    body = native(acl)
    if acl == "absent":
        del body["acl"]
    event = parse(body)
    assert isinstance(event, Upsert) and event.acl is None
    assert "acl" not in native_event(event)


@pytest.mark.parametrize("acl", [{}, {"users": [], "groups": []}, {"users": None}])
def test_an_acl_naming_no_one_is_readable_by_nobody(acl: Any) -> None:
    event = parse(native(acl))
    assert isinstance(event, Upsert) and event.acl == (NOBODY,)
    # and it is stored as such: never as [] (which a store's is_empty reads as "no acl")
    assert contract.acl_payload(event.acl) == [NOBODY]
    assert contract.acl_payload(()) == [NOBODY]
    assert contract.NOBODY == NOBODY and contract.EVERYONE == EVERYONE
    again = parse(native_event(event))
    assert isinstance(again, Upsert) and again.acl == (NOBODY,)


@pytest.mark.parametrize(
    ("acl", "error_class", "fragment"),
    [
        (["alice"], "InvalidAcl", "must be an object"),
        ("user:alice", "InvalidAcl", "not JSON"),
        ({"users": "alice"}, "InvalidAcl", "'acl.users' must be an array"),
        ({"users": [1]}, "InvalidAcl", "acl.users[0] must be a string"),
        ({"users": [""]}, "InvalidAcl", "acl.users[0] is empty"),
        ({"groups": ["  "]}, "InvalidAcl", "acl.groups[0] is empty"),
        ({"users": [" alice"]}, "InvalidAcl", "leading or trailing blanks"),
        ({"users": ["a\nb"]}, "InvalidAcl", "control character"),
        ({"users": ["x" * (MAX_PRINCIPAL_ID_CHARS + 1)]}, "InvalidAcl", "over the 256 limit"),
        ({"roles": ["admin"]}, "InvalidAcl", "unknown keys 'roles'"),
        (
            {"users": ["u"] * MAX_ACL_PRINCIPALS, "groups": ["g"]},
            "AclTooLarge",
            f"over {MAX_ACL_PRINCIPALS} users and groups",
        ),
    ],
)
def test_bad_acls_are_dead_letters(acl: Any, error_class: str, fragment: str) -> None:
    dead = parse(native(acl))
    assert isinstance(dead, DeadLetter), dead
    assert dead.error_class == error_class and fragment in dead.message, dead.message


def test_a_lone_surrogate_in_an_acl_is_a_dead_letter() -> None:
    value = b'{"op":"upsert","id":"d","text":"t","acl":{"users":["\\ud800"]}}'
    dead = parse_record(RawRecord(b"d", value, ORIGIN))
    assert isinstance(dead, DeadLetter) and dead.error_class == "InvalidUnicode"


def debezium(row: dict[str, Any]) -> bytes:
    return json.dumps({"op": "u", "before": None, "after": row}).encode()


def test_debezium_acl_column_object_or_json_text() -> None:
    row = {"id": 5, "text": "t", "tenant": "acme", "acl": {"groups": ["eng"]}}
    event = parse_record(RawRecord(b"5", debezium(row), ORIGIN))
    assert isinstance(event, Upsert) and event.acl == ("group:eng",)
    assert "acl" not in event.metadata  # the mapped column is not metadata
    row["acl"] = json.dumps({"users": ["alice"]})  # a json/jsonb column: JSON text
    event = parse_record(RawRecord(b"5", debezium(row), ORIGIN))
    assert isinstance(event, Upsert) and event.acl == ("user:alice",)
    row["acl"] = None
    event = parse_record(RawRecord(b"5", debezium(row), ORIGIN))
    assert isinstance(event, Upsert) and event.acl is None
    row["acl"] = "{not json"
    dead = parse_record(RawRecord(b"5", debezium(row), ORIGIN))
    assert isinstance(dead, DeadLetter) and dead.error_class == "InvalidAcl"
    assert "after.acl" in dead.message


ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20).filter(
    lambda s: s == s.strip() and bool(s.strip())
)


@settings(max_examples=200, deadline=None)
@given(
    users=st.lists(ids, max_size=8),
    groups=st.lists(ids, max_size=8),
)
def test_acl_round_trips_through_the_native_event(users: list[str], groups: list[str]) -> None:
    """What the API and `freshrag load` write parses to the same principals, and a replay
    (`native_event`) keeps them: a user id equal to a group id never merges with it."""
    event = parse(upsert_event("d", "text", tenant="acme", acl={"users": users, "groups": groups}))
    assert isinstance(event, Upsert)
    expected = {f"user:{u}" for u in users} | {f"group:{g}" for g in groups}
    assert event.acl == (tuple(sorted(expected)) if expected else (NOBODY,))
    again = parse(native_event(event))
    assert isinstance(again, Upsert) and again.acl == event.acl


# -- API key grants (settings) ----------------------------------------------------------------


def test_key_grants_plain_and_with_principals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHRAG_API_KEYS", "k1=acme,k2=acme|user:alice|group:eng")
    s = load_settings()
    assert s.api_keys == {"k1": "acme", "k2": "acme|group:eng|user:alice"}
    assert s.safe_summary()["api_keys"] == ["acme"]
    monkeypatch.setenv(
        "FRESHRAG_API_KEYS",
        json.dumps(
            {"k1": "acme", "k2": {"tenant": "acme", "principals": ["user:bob", "group:x y"]}}
        ),
    )
    assert load_settings().api_keys == {"k1": "acme", "k2": "acme|group:x y|user:bob"}
    assert load_settings().trust_principals_header is False


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("k1=acme|alice", "must be 'user:<id>' or 'group:<id>'"),
        ("k1=acme|user:", "id is empty"),
        ("k1=acme|", "must be 'user:<id>' or 'group:<id>'"),
        ("k1=acme|role:admin", "must be 'user:<id>' or 'group:<id>'"),
        ("k1=acme|user: x", "leading or trailing blanks"),
        ("k1=acme|*", "must be 'user:<id>' or 'group:<id>'"),
        ("k1=bad tenant|user:a", "is not 1-64 characters"),
        ('{"k1": {"tenant": "acme", "principals": "user:a"}}', "must be a list of strings"),
        ('{"k1": {"tenant": "acme", "roles": []}}', "unknown fields"),
        ('{"k1": 3}', 'must be "tenant"'),
        ('{"k1": {"tenant": "acme", "principals": ["user:a|b"]}}', "holds '|' or ','"),
        ("{oops", "is not JSON"),
        ("k1=acme|" + "|".join(f"user:{n}" for n in range(MAX_CALLER_PRINCIPALS + 1)), "over"),
    ],
)
def test_malformed_key_specs_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, value: str, fragment: str
) -> None:
    monkeypatch.setenv("FRESHRAG_API_KEYS", value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith("invalid setting FRESHRAG_API_KEYS:") and fragment in message
    assert "k1" not in message.replace("key #1", "")  # the key itself is never quoted


# -- callers ----------------------------------------------------------------------------------

KEYS = {"k-plain": "acme", "k-alice": "acme|group:eng|user:alice", "k-other": "globex|user:bob"}


def test_callers_hold_everyone_plus_their_keys_principals() -> None:
    assert resolve_caller("Bearer k-plain", KEYS, True).principals == (EVERYONE,)
    alice = resolve_caller("Bearer k-alice", KEYS, True)
    assert (alice.tenant, alice.principals) == ("acme", ("*", "group:eng", "user:alice"))
    assert resolve_caller(None, KEYS, False).principals == (EVERYONE,)  # auth off


def test_the_principals_header_counts_only_when_trusted_and_authenticated() -> None:
    header = "user:carol, group:ops"
    ignored = resolve_caller("Bearer k-plain", KEYS, True, header, trust_header=False)
    assert ignored.principals == (EVERYONE,)
    trusted = resolve_caller("Bearer k-alice", KEYS, True, header, trust_header=True)
    assert trusted.tenant == "acme"  # never from the header
    assert trusted.principals == ("*", "group:eng", "group:ops", "user:alice", "user:carol")
    # never for an unauthenticated caller: a bad key is refused, auth off ignores the header
    with pytest.raises(Unauthorized):
        resolve_caller("Bearer nope", KEYS, True, header, trust_header=True)
    assert resolve_caller(None, KEYS, False, header, True).principals == (EVERYONE,)
    as_json = resolve_caller("Bearer k-plain", KEYS, True, '["group:cn=eng,ou=x"]', True)
    assert as_json.principals == ("*", "group:cn=eng,ou=x")
    assert resolve_caller("Bearer k-plain", KEYS, True, "", True).principals == (EVERYONE,)


@pytest.mark.parametrize(
    "header",
    [
        "alice",
        "*",
        "user:alice,,group:eng",
        "user:",
        "[1]",
        '{"users": ["a"]}',
        "[not json",
        ",".join(f"user:{n}" for n in range(MAX_CALLER_PRINCIPALS + 1)),
        "user:" + "a" * 20_000,
    ],
)
def test_a_malformed_trusted_header_is_refused(header: str) -> None:
    with pytest.raises(BadPrincipals):
        resolve_caller("Bearer k-plain", KEYS, True, header, trust_header=True)
    # untrusted: ignored, whatever it holds
    assert resolve_caller("Bearer k-plain", KEYS, True, header).principals == (EVERYONE,)


def test_header_name_and_list_parsing() -> None:
    assert PRINCIPALS_HEADER == "X-Freshrag-Principals"
    assert parse_principal_list(" group:b ,user:a ", "h") == ("group:b", "user:a")


# -- the recent-writes panel ------------------------------------------------------------------


def test_recent_writes_show_only_readable_documents() -> None:
    recent = RecentWrites()
    now = "2026-11-29T00:00:00+00:00"
    items = [
        Activity("acme", "public", "upsert", 1, "P", 1, now, None),
        Activity("acme", "eng", "upsert", 1, "E", 1, now, ("group:eng",)),
        Activity("acme", "closed", "upsert", 1, "C", 1, now, (NOBODY,)),
        Activity("acme", "gone", "delete", 1, "", 0, now, None),
        Activity("globex", "other", "upsert", 1, "O", 1, now, None),
    ]
    recent._items.extend(items)
    assert [a.doc_id for a in recent.latest("acme", 10, principals=["*"])] == ["public"]
    shown = recent.latest("acme", 10, principals=["*", "group:eng"])
    assert [a.doc_id for a in shown] == ["eng", "public"]
    assert len(recent.latest("acme", 10)) == 4  # unrestricted (internal)


# -- the API: principals reach the store, never from the body --------------------------------


class RecordingStore:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str, Any]] = []

    def document_status(
        self, tenant: str, doc_id: str, principals: Any = None
    ) -> contract.DocumentStatus | None:
        self.asked.append((tenant, doc_id, principals))
        return None


class RecordingSearcher:
    def __init__(self) -> None:
        self.filters: list[contract.SearchFilter] = []

    def search(self, req: Any) -> Any:
        self.filters.append(req.filter)
        return SimpleNamespace(hits=[], mode=req.mode)


class Producer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, event: dict[str, Any]) -> Produced:
        self.sent.append(event)
        return Produced("documents", 0, len(self.sent))


def api(**overrides: Any) -> tuple[TestClient, RecordingStore, RecordingSearcher, Producer]:
    settings = load_settings(
        **{"api_keys": {"k-plain": "acme", "k-eng": "acme|group:eng"}, **overrides}
    )
    store, searcher, producer = RecordingStore(), RecordingSearcher(), Producer()
    services: Any = SimpleNamespace(
        settings=settings,
        store=store,
        metrics=ApiMetrics(),
        producer=producer,
        watermarks=None,
    )
    services.current = lambda: SimpleNamespace(name="t", store=store, searcher=searcher)
    return TestClient(create_app(settings, services)), store, searcher, producer


def bearer(key: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}


@pytest.mark.parametrize("trusted", [False, True])
def test_search_and_document_reads_carry_the_callers_principals(trusted: bool) -> None:
    http, store, searcher, _ = api(trust_principals_header=trusted)
    gateway = {PRINCIPALS_HEADER: "user:carol,group:ops"}
    with http:
        for key in ("k-plain", "k-eng"):
            r = http.post("/v1/search", headers=bearer(key, **gateway), json={"query": "q"})
            assert r.status_code == 200, r.text
            r = http.get("/v1/documents/d1", headers=bearer(key, **gateway))
            assert r.status_code == 404  # not readable looks like missing
    extra = {"group:ops", "user:carol"} if trusted else set()
    expected = [{"*"} | extra, {"*", "group:eng"} | extra]
    assert [set(f.principals or ()) for f in searcher.filters] == expected
    assert [f.tenant for f in searcher.filters] == ["acme", "acme"]
    assert [set(p) for _, _, p in store.asked] == expected


def test_a_malformed_trusted_header_is_a_400_and_an_untrusted_one_is_ignored() -> None:
    bad = {PRINCIPALS_HEADER: "root"}
    http, _, searcher, _ = api(trust_principals_header=True)
    with http:
        r = http.post("/v1/search", headers=bearer("k-plain", **bad), json={"query": "q"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["field"] == PRINCIPALS_HEADER
        assert "user:<id>" in r.json()["error"]["message"]
        # without a valid key the header changes nothing: 401
        r = http.post("/v1/search", headers=bearer("nope", **bad), json={"query": "q"})
        assert r.status_code == 401
    assert searcher.filters == []
    http, _, searcher, _ = api()
    with http:
        r = http.post("/v1/search", headers=bearer("k-plain", **bad), json={"query": "q"})
        assert r.status_code == 200 and searcher.filters[0].principals == ("*",)


def test_the_body_cannot_widen_the_principals() -> None:
    http, _, searcher, _ = api()
    with http:
        for body in (
            {"query": "q", "filters": {"principals": ["group:eng"]}},
            {"query": "q", "filters": {"acl": ["*"]}},
            {"query": "q", "principals": ["group:eng"]},
        ):
            r = http.post("/v1/search", headers=bearer("k-plain"), json=body)
            assert r.status_code == 422, r.text
    assert searcher.filters == []


def test_document_writes_carry_the_acl() -> None:
    http, _, _, producer = api()
    with http:
        body = {"id": "d", "text": "t", "acl": {"users": ["alice"], "groups": []}}
        assert http.post("/v1/documents", headers=bearer("k-plain"), json=body).status_code == 202
        assert http.post("/v1/documents", headers=bearer("k-plain"), json={"id": "e", "text": "t"})
        for acl, fragment in (
            ({"users": ["alice"], "roles": []}, "roles"),
            ({"users": [""]}, "users"),
            ({"users": [" a"]}, "leading or trailing blanks"),
            ({"users": "alice"}, "users"),
            ({"users": ["x"] * 600, "groups": ["y"] * 401}, "over 1000"),
            (["alice"], "acl"),
        ):
            body = {"id": "d", "text": "t", "acl": acl}
            r = http.post("/v1/documents", headers=bearer("k-plain"), json=body)
            assert r.status_code == 422 and fragment in r.text, r.text
    assert producer.sent[0]["acl"] == {"users": ["alice"], "groups": []}
    assert "acl" not in producer.sent[1]
    event = parse(producer.sent[0])
    assert isinstance(event, Upsert) and event.acl == ("user:alice",)


def test_freshrag_load_jsonl_carries_the_acl(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "text": "t", "acl": {"users": ["alice"], "groups": ["eng"]}},
        {"id": "b", "text": "t"},
        {"id": "c", "text": "t", "acl": {"users": "alice"}},  # the flow dead-letters it
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    events = list(iter_events(detect(path), tenant="acme"))
    parsed = [parse(e) for e in events]
    assert isinstance(parsed[0], Upsert) and parsed[0].acl == ("group:eng", "user:alice")
    assert isinstance(parsed[1], Upsert) and parsed[1].acl is None
    assert isinstance(parsed[2], DeadLetter) and parsed[2].error_class == "InvalidAcl"
