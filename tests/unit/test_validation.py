"""The storable-value rules at their exact limits, through parse_record and the API body model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from freshrag.api.schemas import DocumentBody
from freshrag.ingest.events import DeadLetter, RawRecord, RecordOrigin, Upsert, parse_record
from freshrag.ingest.validation import (
    MAX_METADATA_BYTES,
    _size_bound,
    check_metadata,
)

ORIGIN = RecordOrigin("documents", 0, 1, 1_764_331_200_000)


def parse(**fields: Any) -> object:
    body = {"op": "upsert", "id": "a", "text": "hello", **fields}
    return parse_record(RawRecord(b"a", json.dumps(body).encode(), ORIGIN))


def api(**fields: Any) -> str | None:
    """None if the API body model accepts these fields, else the first error message."""
    try:
        DocumentBody.model_validate({"id": "a", "text": "hello", **fields})
    except ValidationError as exc:
        return str(exc.errors()[0]["msg"])
    return None


@pytest.mark.parametrize(
    ("ok", "bad", "error_class"),
    [
        ({"version": 2**53}, {"version": 2**53 + 1}, "NumberOutOfRange"),
        ({"metadata": {"n": 2**63 - 1}}, {"metadata": {"n": 2**63}}, "NumberOutOfRange"),
        ({"metadata": {"n": -(2**63)}}, {"metadata": {"n": -(2**63) - 1}}, "NumberOutOfRange"),
        ({"metadata": {"k" * 128: 1}}, {"metadata": {"k" * 129: 1}}, "InvalidMetadataKey"),
        ({"metadata": {"é-1_x": 1}}, {"metadata": {"a b": 1}}, "InvalidMetadataKey"),
        ({"metadata": {"s": "v" * 2048}}, {"metadata": {"s": "v" * 2049}}, "MetadataTooLarge"),
        ({"metadata": {"l": [1] * 256}}, {"metadata": {"l": [1] * 257}}, "MetadataTooLarge"),
        ({"metadata": {"l": [1, "a", True]}}, {"metadata": {"l": [[1]]}}, "WrongType"),
        (
            {"metadata": {f"k{i}": "é" * 2000 for i in range(4)}},  # 16 KB of UTF-8, bound
            {"metadata": {f"k{i}": "é" * 2000 for i in range(5)}},
            "MetadataTooLarge",
        ),
    ],
)
def test_limits_in_the_flow_and_the_api(
    ok: dict[str, Any], bad: dict[str, Any], error_class: str
) -> None:
    accepted = parse(**ok)
    assert isinstance(accepted, Upsert), accepted
    refused = parse(**bad)
    assert isinstance(refused, DeadLetter) and refused.error_class == error_class, refused
    assert api(**ok) is None
    assert api(**bad) is not None  # the API answers 422 for what the flow dead-letters


def test_metadata_key_count_limit() -> None:
    assert isinstance(parse(metadata={f"k{i}": i for i in range(64)}), Upsert)
    refused = parse(metadata={f"k{i}": i for i in range(65)})
    assert isinstance(refused, DeadLetter) and refused.error_class == "MetadataTooLarge"


def test_api_refuses_non_finite_numbers_and_lone_surrogates() -> None:
    for meta in ({"x": float("nan")}, {"x": [1.0, float("inf")]}, {"x": float("-inf")}):
        assert api(metadata=meta) is not None
    assert api(text="a\ud800") is not None and api(id="\udfff") is not None
    assert api(text="a\x00b \u202e 😀", metadata={"x": 1.5}) is None


flat_values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    meta=st.dictionaries(
        st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=20),
        st.one_of(flat_values, st.lists(flat_values, max_size=10)),
        max_size=20,
    )
)
def test_size_bound_is_an_upper_bound(meta: dict[str, Any]) -> None:
    exact = len(json.dumps(meta, ensure_ascii=False).encode())
    assert _size_bound(meta) >= exact
    assert (exact <= MAX_METADATA_BYTES) == (check_metadata_ok(meta))


def check_metadata_ok(meta: dict[str, Any]) -> bool:
    try:
        check_metadata(meta)
    except ValueError:
        return False
    return True
