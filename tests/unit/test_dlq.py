"""Dead letters always fit the DLQ producer's size limit; truncation is marked in the headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrag.ingest.dlq import (
    DEFAULT_DLQ_MAX_MESSAGE_BYTES,
    MIN_DLQ_MAX_MESSAGE_BYTES,
    ORIGINAL_KEY_SIZE_HEADER,
    ORIGINAL_SIZE_HEADER,
    RECORD_OVERHEAD,
    TRUNCATED_HEADER,
    fit_dead_letter,
    message_size,
)
from freshrag.ingest.events import DeadLetter, RecordOrigin

ORIGIN = RecordOrigin("documents", 0, 7, 1_764_331_200_000)


def dead(value: bytes | None, key: bytes | None = b"doc-1", message: str = "too big") -> DeadLetter:
    return DeadLetter(key, value, ORIGIN, "DocumentTooLarge", message, "parse")


def test_small_dead_letter_is_unchanged() -> None:
    d = dead(b'{"op":"upsert"}')
    fitted = fit_dead_letter(d.key, d.value, d.headers())
    assert (fitted.key, fitted.value, fitted.headers) == (d.key, d.value, d.headers())
    assert not fitted.truncated
    assert TRUNCATED_HEADER not in dict(fitted.headers)


def test_almost_one_megabyte_value_plus_headers_is_truncated_and_marked() -> None:
    """The issue's case: a value just under 1 MB plus the reason headers is over the limit."""
    value = b"x" * 999_990
    d = dead(value, message="event is 999990 bytes, over the 999000-byte limit")
    assert message_size(d.key, d.value, d.headers()) > DEFAULT_DLQ_MAX_MESSAGE_BYTES - 512
    fitted = fit_dead_letter(d.key, d.value, d.headers(), DEFAULT_DLQ_MAX_MESSAGE_BYTES)
    headers = dict(fitted.headers)
    assert fitted.truncated
    assert headers[TRUNCATED_HEADER] == b"true"
    assert int(headers[ORIGINAL_SIZE_HEADER]) == 999_990
    assert fitted.key == d.key  # the key still names the document
    assert fitted.value is not None and value.startswith(fitted.value)
    assert len(fitted.value) > 900_000  # only what does not fit is cut
    size = message_size(fitted.key, fitted.value, fitted.headers)
    assert size + RECORD_OVERHEAD <= DEFAULT_DLQ_MAX_MESSAGE_BYTES
    # every reason header survives
    for name in ("freshrag.error.class", "freshrag.error.message", "freshrag.source.offset"):
        assert headers[name] == dict(d.headers())[name]


def test_huge_key_is_cut_after_the_value() -> None:
    d = dead(b"v" * 10, key=b"k" * 2_000_000)
    fitted = fit_dead_letter(d.key, d.value, d.headers(), 100_000)
    headers = dict(fitted.headers)
    assert fitted.value == b""
    assert headers[ORIGINAL_KEY_SIZE_HEADER] == b"2000000"
    assert headers[ORIGINAL_SIZE_HEADER] == b"10"
    assert fitted.key is not None and 0 < len(fitted.key) < 100_000
    assert message_size(fitted.key, fitted.value, fitted.headers) + RECORD_OVERHEAD <= 100_000


def test_tombstone_dead_letter_keeps_a_null_value() -> None:
    d = dead(None, key=b"k" * 200_000)
    fitted = fit_dead_letter(d.key, d.value, d.headers(), 65_536)
    assert fitted.value is None and fitted.truncated


def test_limit_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        fit_dead_letter(b"k", b"v", [], MIN_DLQ_MAX_MESSAGE_BYTES - 1)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=300_000)),
    value=st.one_of(st.none(), st.binary(max_size=300_000)),
    message=st.text(max_size=2_000),
    max_bytes=st.integers(MIN_DLQ_MAX_MESSAGE_BYTES, 400_000),
)
def test_fitted_message_always_fits_and_is_a_prefix(
    key: bytes | None, value: bytes | None, message: str, max_bytes: int
) -> None:
    d = dead(value, key=key, message=message)
    fitted = fit_dead_letter(d.key, d.value, d.headers(), max_bytes)
    assert message_size(fitted.key, fitted.value, fitted.headers) + RECORD_OVERHEAD <= max_bytes
    assert (fitted.value is None) == (value is None) and (fitted.key is None) == (key is None)
    assert (value or b"").startswith(fitted.value or b"")
    assert (key or b"").startswith(fitted.key or b"")
    fits = message_size(key, value, d.headers()) + RECORD_OVERHEAD <= max_bytes
    assert fitted.truncated == (not fits)
    assert (dict(fitted.headers).get(TRUNCATED_HEADER) == b"true") == fitted.truncated


def test_dead_letter_message_fits_and_survives_an_unencodable_reason() -> None:
    from freshrag.ingest.kafka_io import dead_letter_message

    msg = dead_letter_message(dead(b"y" * 1_048_000, message="bad key '\ud800'"), 1_000_000)
    headers = dict(msg.headers)
    assert headers[TRUNCATED_HEADER] == b"true"
    assert headers[ORIGINAL_SIZE_HEADER] == b"1048000"
    assert b"\\ud800" in headers["freshrag.error.message"]
    assert message_size(msg.key, msg.value, msg.headers) + RECORD_OVERHEAD <= 1_000_000
