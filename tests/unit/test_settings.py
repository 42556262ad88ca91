"""Settings: defaults, env parsing, and one clear error line naming the variable."""

from __future__ import annotations

import pytest

from freshrag.core.settings import SettingsError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    s = load_settings()
    assert s.topic == "documents" and s.dlq_topic == "documents.dlq"
    assert s.qdrant_url is None and s.collection == "freshrag"
    assert s.auth_enabled is True and s.api_keys == {}


def test_api_keys_and_aliases_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHRAG_API_KEYS", "k1=acme, k2=globex")
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("FRESHRAG_OPENAI_API_KEY", "sk-secret-value")
    s = load_settings()
    assert s.api_keys == {"k1": "acme", "k2": "globex"}
    assert s.qdrant_url == "http://qdrant:6333"
    summary = repr(s.safe_summary()) + repr(s)
    assert "sk-secret-value" not in summary and "k1" not in repr(s.safe_summary())


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("FRESHRAG_CHUNK_TOKENS", "lots", "FRESHRAG_CHUNK_TOKENS"),
        ("FRESHRAG_KAFKA_BOOTSTRAP", "nohost", "FRESHRAG_KAFKA_BOOTSTRAP"),
        ("FRESHRAG_API_KEYS", "justakey", "FRESHRAG_API_KEYS"),
        ("FRESHRAG_CHUNK_OVERLAP", "500", "FRESHRAG_CHUNK_OVERLAP"),
        ("FRESHRAG_API_PORT", "70000", "FRESHRAG_API_PORT"),
    ],
)
def test_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert fragment in message and "\n" not in message
