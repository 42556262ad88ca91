"""What the index can store, checked before a record enters the flow (pure, no I/O).

Qdrant (Edge and server) rejects some payloads only at write time, and a deep payload is even
written and then breaks every later read of the shard ("recursion limit exceeded"). So each rule
here is checked at parse time, and the API applies the same functions to its request bodies:

- JSON numbers are finite (no `NaN`/`Infinity` literals, no float that overflows to infinity);
  an integer literal has at most `MAX_INT_DIGITS` digits;
- a payload integer is within int64 (Qdrant's payload integers are i64), a `version` within
  `0..MAX_VERSION` (2^53: versions are compared as floats in the store's range filters);
- text is valid Unicode: no lone surrogate (JSON `\\ud800` parses to one; UTF-8 cannot carry it);
- metadata is a flat object: at most `MAX_METADATA_KEYS` keys, each 1..`MAX_METADATA_KEY_CHARS`
  letters, digits, `_` or `-` (other characters break the `metadata.<key>` filter paths); values
  are strings of at most `MAX_METADATA_STRING_CHARS`, int64 integers, finite numbers, booleans,
  or lists of at most `MAX_METADATA_LIST_ITEMS` of those; `MAX_METADATA_BYTES` as JSON in all;
- an `acl` is `{"users": [...], "groups": [...]}`: at most `MAX_ACL_PRINCIPALS` ids in all, each
  1-`MAX_PRINCIPAL_ID_CHARS` characters without control characters or edge blanks
  (`core.principals`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from freshrag.core.principals import MAX_ACL_PRINCIPALS as MAX_ACL_PRINCIPALS
from freshrag.core.principals import MAX_PRINCIPAL_ID_CHARS as MAX_PRINCIPAL_ID_CHARS
from freshrag.core.principals import PrincipalError, parse_acl

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_VERSION = 2**53
MAX_INT_DIGITS = 64  # longer integer literals are refused while parsing (no huge int objects)

MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_STRING_CHARS = 2_048
MAX_METADATA_LIST_ITEMS = 256
MAX_METADATA_BYTES = 16_384

# A backslash-u escape of a surrogate code point: the only way a lone surrogate gets into
# parsed JSON text (strict UTF-8 decoding never yields one).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class InvalidValue(ValueError):
    """A value the index cannot store; `error_class` names the rule for the DLQ header."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


# -- JSON --------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise InvalidValue(
        "NonFiniteNumber", f"JSON literal {name} is not a finite number (NaN/Infinity refused)"
    )


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidValue("NonFiniteNumber", f"number {text[:40]} overflows to infinity")
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidValue(
            "NumberOutOfRange",
            f"integer literal of {len(text)} digits (at most {MAX_INT_DIGITS} are accepted)",
        )
    return int(text)


_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int
)


def loads_strict(text: str) -> Any:
    """`json.loads` that refuses what the index cannot store.

    Raises `json.JSONDecodeError` for text that is not JSON, and `InvalidValue` for NaN or
    infinite numbers, absurdly long integer literals, nesting too deep to parse, and strings
    holding lone surrogates.
    """
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise InvalidValue("TooDeep", "JSON is nested too deeply to parse") from None
    if ("\\ud" in text or "\\uD" in text) and _SURROGATE_ESCAPE.search(text):
        check_unicode_tree(value)
    return value


def check_unicode_tree(value: Any) -> None:
    """Raise `InvalidValue` if any string (key or value) at any depth has a lone surrogate."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            check_unicode(item, "a string")
        elif isinstance(item, dict):
            for key, sub in item.items():
                check_unicode(key, "an object key")
                stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)


def check_unicode(text: str, name: str) -> str:
    """`text` unchanged if it is valid Unicode (encodable as UTF-8), else `InvalidValue`."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidValue(
            "InvalidUnicode",
            f"{name} holds a lone surrogate {text[exc.start]!a} at char {exc.start}",
        ) from None
    return text


# -- numbers -----------------------------------------------------------------------------------


def check_int64(value: int, name: str) -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidValue(
            "NumberOutOfRange", f"{name} is {_short(value)}, outside the 64-bit integer range"
        )
    return value


def check_finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise InvalidValue("NonFiniteNumber", f"{name} is {value}; numbers must be finite")
    return value


def check_version(value: int, name: str = "field 'version'") -> int:
    """A version is an integer in 0..2^53 (exact as a float, which the store's filters use)."""
    if not 0 <= value <= MAX_VERSION:
        raise InvalidValue(
            "NumberOutOfRange", f"{name} is {_short(value)}, outside 0..2^53 ({MAX_VERSION})"
        )
    return value


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 30 else f"{text[:12]}...({len(text)} digits)"


# -- metadata ----------------------------------------------------------------------------------


def is_metadata_key(key: object) -> bool:
    """1..128 characters, each a letter, a digit, `_` or `-`: a valid Qdrant filter path part."""
    return (
        isinstance(key, str)
        and 0 < len(key) <= MAX_METADATA_KEY_CHARS
        and all(c.isalnum() or c in "_-" for c in key)
    )


def json_kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
    }.get(type(value), type(value).__name__)


def _check_scalar(value: Any, name: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        check_int64(value, name)
    elif isinstance(value, float):
        check_finite(value, name)
    elif isinstance(value, str):
        check_unicode(value, name)
        if len(value) > MAX_METADATA_STRING_CHARS:
            raise InvalidValue(
                "MetadataTooLarge",
                f"{name} has {len(value)} characters, over the {MAX_METADATA_STRING_CHARS} limit",
            )
    else:
        raise InvalidValue(
            "WrongType",
            f"{name} must be a string, number, boolean or a list of them, got {json_kind(value)}",
        )


def check_metadata_value(value: Any, name: str) -> None:
    """A scalar, or a flat list of at most 256 scalars (no nested lists or objects)."""
    if isinstance(value, list):
        if len(value) > MAX_METADATA_LIST_ITEMS:
            raise InvalidValue(
                "MetadataTooLarge",
                f"{name} has {len(value)} items, over the {MAX_METADATA_LIST_ITEMS}-item limit",
            )
        for item in value:
            if isinstance(item, list | dict):
                raise InvalidValue(
                    "WrongType",
                    f"{name} must be a flat list of scalars, not hold {json_kind(item)}s",
                )
            _check_scalar(item, f"{name} item")
        return
    _check_scalar(value, name)


def _size_bound(metadata: Mapping[str, Any]) -> int:
    """An upper bound of the metadata's JSON size (6 bytes per character: a \\uXXXX escape),
    cheap enough to skip the exact count for the usual small metadata."""
    total = 2
    for key, value in metadata.items():
        total += 6 * len(key) + 8 + (4 if isinstance(value, list) else 0)
        for item in value if isinstance(value, list) else [value]:
            total += 6 * len(item) + 6 if isinstance(item, str) else 30
    return total


def check_metadata(value: Any) -> dict[str, Any]:
    """A copy of `value` if it is storable metadata (see the module doc), else `InvalidValue`."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidValue(
            "WrongType", f"field 'metadata' must be an object, got {json_kind(value)}"
        )
    if len(value) > MAX_METADATA_KEYS:
        raise InvalidValue(
            "MetadataTooLarge",
            f"metadata has {len(value)} keys, over the {MAX_METADATA_KEYS}-key limit",
        )
    for key, item in value.items():
        if not is_metadata_key(key):
            shown = ascii(key)[:60] if isinstance(key, str) else json_kind(key)
            raise InvalidValue(
                "InvalidMetadataKey",
                f"metadata key {shown} must be 1-{MAX_METADATA_KEY_CHARS} letters, digits, "
                "'_' or '-' (no '.', '[', ']', quotes or spaces: they break filter paths)",
            )
        check_metadata_value(item, f"metadata '{key}'")
    out = dict(value)
    if _size_bound(out) <= MAX_METADATA_BYTES:
        return out
    size = len(json.dumps(out, ensure_ascii=False, allow_nan=False).encode())
    if size > MAX_METADATA_BYTES:
        raise InvalidValue(
            "MetadataTooLarge",
            f"metadata is {size} bytes as JSON, over the {MAX_METADATA_BYTES}-byte limit",
        )
    return out


# -- acl ---------------------------------------------------------------------------------------


def check_acl(value: Any) -> tuple[str, ...] | None:
    """An event's `acl` as sorted principals ("user:<id>", "group:<id>"; ("nobody",) when it
    names no one), None when absent/null, else `InvalidValue` (class InvalidAcl/AclTooLarge)."""
    try:
        return parse_acl(value)
    except PrincipalError as exc:
        raise InvalidValue(exc.error_class, str(exc)) from None
