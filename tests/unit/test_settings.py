"""Settings: defaults, env parsing, and one clear error line naming the variable."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
        ("FRESHRAG_EMBED_BACKEND", "tensorrt", "FRESHRAG_EMBED_BACKEND"),
        ("FRESHRAG_EMBED_BACKEND", "ONNX", "FRESHRAG_EMBED_BACKEND"),
        ("FRESHRAG_EMBED_THREADS", "-1", "FRESHRAG_EMBED_THREADS"),
        ("FRESHRAG_EMBED_THREADS", "two", "FRESHRAG_EMBED_THREADS"),
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


EMBED_BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    backend=st.one_of(st.sampled_from(EMBED_BACKENDS), st.text(max_size=20)),
    threads=st.one_of(st.integers(-5, 300).map(str), st.text(max_size=6)),
)
def test_embed_backend_and_threads_fuzz(backend: str, threads: str) -> None:
    """Any value either loads as itself or fails with one line naming the variable."""
    env = {"FRESHRAG_EMBED_BACKEND": backend, "FRESHRAG_EMBED_THREADS": threads}
    if "\x00" in backend + threads:
        return  # not representable in a real environment
    canonical = backend in EMBED_BACKENDS and threads.isascii() and threads.isdigit()
    must_load = canonical and int(threads) <= 256
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        try:
            s = load_settings()
        except SettingsError as exc:
            message = str(exc)
            assert "\n" not in message
            assert "FRESHRAG_EMBED_BACKEND" in message or "FRESHRAG_EMBED_THREADS" in message
            assert not must_load, message
            return
    assert s.embed_backend == backend  # only the exact names load
    assert 0 <= s.embed_threads <= 256


def test_embed_defaults() -> None:
    s = load_settings()
    assert s.embed_backend in EMBED_BACKENDS and s.embed_threads == 0
    assert s.embed_cache_dir is None


FRESHNESS_KNOBS = {
    "FRESHRAG_EMBED_BACKGROUND_MIN_CHUNKS": ("embed_background_min_chunks", 1, 1_000_000),
    "FRESHRAG_KAFKA_FETCH_WAIT_MAX_MS": ("kafka_fetch_wait_max_ms", 1, 10_000),
    "FRESHRAG_STOP_DRAIN_S": ("stop_drain_s", 0, 3600),
}
HOSTILE = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e308", "-0", "9" * 40, "１０", "", " 5 "]),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FRESHNESS_KNOBS)), value=HOSTILE)
def test_freshness_knobs_load_in_bounds_or_fail_naming_the_variable(name: str, value: str) -> None:
    """NaN, infinities, huge numbers and odd unicode: a value loads inside its bounds, or
    start-up fails with one line naming the variable; never a crash or an unbounded value."""
    if "\x00" in value:
        return  # not representable in a real environment
    field, low, high = FRESHNESS_KNOBS[name]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(name, value)
        try:
            s = load_settings()
        except SettingsError as exc:
            assert name in str(exc) and "\n" not in str(exc)
            return
    loaded = getattr(s, field)
    assert low <= loaded <= high, (value, loaded)
