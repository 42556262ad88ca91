"""API keys: tenants validated at start-up like event tenants, keys compared in constant time,
and never quoted in an error (issue 10)."""

from __future__ import annotations

import hmac
import json

import pytest

from freshrag.api import auth
from freshrag.core.settings import SettingsError, load_settings
from freshrag.core.tenants import TENANT_PATTERN, is_valid_tenant
from freshrag.ingest import events

SECRET = "sk-very-secret-0123456789"


def test_the_api_and_events_share_one_tenant_rule() -> None:
    origin = events.RecordOrigin("documents", 0, 0, 1)
    for tenant, ok in (("acme", True), ("acme\n", False), ("ümlaut", False)):
        body = {"op": "upsert", "id": "d", "tenant": tenant, "text": "t"}
        record = events.RawRecord(b"d", json.dumps(body).encode(), origin)
        parsed = events.parse_record(record)
        assert isinstance(parsed, events.Upsert) is ok is is_valid_tenant(tenant)
    assert TENANT_PATTERN.pattern.startswith("^")
    for tenant in ("acme", "a.b-c_d", "x" * 64):
        assert is_valid_tenant(tenant)
    for tenant in ("", "x" * 65, "a b", "a/b", "acme\n", "ümlaut", None, 5):
        assert not is_valid_tenant(tenant)


@pytest.mark.parametrize(
    "value",
    [
        f"{SECRET}=bad tenant",
        f"k1=acme,{SECRET}=a/b",
        f'{{"{SECRET}": "x" }}'.replace('"x" ', '"' + "t" * 65 + '"'),
        f'{{"{SECRET}": 5}}',
        f"{SECRET}=",
        f" {SECRET} =acme",
    ],
)
def test_invalid_api_keys_stop_start_up_without_quoting_the_key(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRESHRAG_API_KEYS", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("invalid setting FRESHRAG_API_KEYS:")
    assert SECRET not in message and SECRET[:12] not in message


def test_valid_keys_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHRAG_API_KEYS", f"{SECRET}=acme,k2=beta.team")
    settings = load_settings()
    assert settings.api_keys == {SECRET: "acme", "k2": "beta.team"}
    assert SECRET not in str(settings.safe_summary())


def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """compare_digest runs once per configured key on equal-length digests, whichever key (if
    any) matches, so timing reveals neither the matching key nor its length."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    keys = {"short": "a", SECRET: "b", "x" * 300: "c"}
    for token, tenant in (("short", "a"), (SECRET, "b"), ("x" * 300, "c")):
        calls.clear()
        assert auth.resolve_caller(f"Bearer {token}", keys, True).tenant == tenant
        assert calls == [(32, 32)] * 3
    calls.clear()
    with pytest.raises(auth.Unauthorized) as info:
        auth.resolve_caller(f"Bearer {SECRET}x", keys, True)
    assert calls == [(32, 32)] * 3 and SECRET not in info.value.message
