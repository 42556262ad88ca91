"""Principals: who may read a document (its `acl`) and who a caller is (pure, no imports).

A principal is `user:<id>` or `group:<id>`. An id is 1-256 characters of valid Unicode, with no
control characters and no leading or trailing blanks; it is compared exactly (case-sensitive).

- A change event's `acl` is `{"users": [...], "groups": [...]}` (at most `MAX_ACL_PRINCIPALS`
  ids in all); `parse_acl` turns it into sorted principal strings. No `acl` (absent or null):
  the whole tenant may read the document. An `acl` with no users and no groups: nobody may
  read it; it is stored as `NOBODY`, which no caller can hold.
- Every caller holds `EVERYONE` ("*") plus the principals of its API key (and, when the trusted
  gateway header is enabled, the header's). Documents without an `acl` are stored with
  `acl: ["*"]`; points written before ACLs existed have no `acl` and are readable by all.
- In an API key spec (`tenant|user:alice|group:eng`) and the gateway header's comma-separated
  form, ids cannot hold `|` or `,`; the header's JSON-array form can carry any id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

EVERYONE = "*"  # held by every caller; stored for documents readable by the whole tenant
NOBODY = "nobody"  # stored for an `acl` with no users and no groups; no caller holds it
USER = "user"
GROUP = "group"
KINDS = (USER, GROUP)

MAX_PRINCIPAL_ID_CHARS = 256
MAX_ACL_PRINCIPALS = 1_000  # users + groups of one document
MAX_CALLER_PRINCIPALS = 256  # of one API key, and of one gateway header
MAX_HEADER_CHARS = 16_384  # the gateway header's value
PRINCIPALS_HEADER = "X-Freshrag-Principals"

_ACL_KEYS = {"users": USER, "groups": GROUP}


class PrincipalError(ValueError):
    """A principal or `acl` that cannot be stored or trusted; `error_class` names the rule."""

    def __init__(self, message: str, error_class: str = "InvalidAcl") -> None:
        super().__init__(message)
        self.error_class = error_class


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer"}.get(
        type(value), type(value).__name__
    )


def check_id(value: Any, name: str) -> str:
    """`value` if it is a valid principal id (see the module doc), else PrincipalError."""
    if not isinstance(value, str):
        raise PrincipalError(f"{name} must be a string, got {_kind(value)}")
    if not value or not value.strip():
        raise PrincipalError(f"{name} is empty")
    if len(value) > MAX_PRINCIPAL_ID_CHARS:
        raise PrincipalError(
            f"{name} has {len(value)} characters, over the {MAX_PRINCIPAL_ID_CHARS} limit"
        )
    if value != value.strip():
        raise PrincipalError(f"{name} has leading or trailing blanks")
    for pos, char in enumerate(value):
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            raise PrincipalError(f"{name} holds a control character at char {pos}")
        if 0xD800 <= code <= 0xDFFF:
            raise PrincipalError(f"{name} holds a lone surrogate at char {pos}")
    return value


def principal(kind: str, ident: str) -> str:
    return f"{kind}:{ident}"


def check_principal(value: Any, name: str = "principal") -> str:
    """A `user:<id>` / `group:<id>` string (a caller's principal), else PrincipalError."""
    if not isinstance(value, str):
        raise PrincipalError(f"{name} must be a string, got {_kind(value)}")
    kind, sep, ident = value.partition(":")
    if not sep or kind not in KINDS:
        shown = value if len(value) <= 60 else value[:60] + "…"
        raise PrincipalError(f"{name} {shown!r} must be 'user:<id>' or 'group:<id>'")
    check_id(ident, f"{name} id")
    return value


def parse_acl(value: Any) -> tuple[str, ...] | None:
    """An event's `acl` field -> sorted unique principals, `(NOBODY,)` when it names nobody,
    None when absent (the whole tenant may read); PrincipalError for anything else."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PrincipalError(
            f'field \'acl\' must be an object {{"users": [...], "groups": [...]}}, '
            f"got {_kind(value)}"
        )
    unknown = sorted(str(k) for k in value if k not in _ACL_KEYS)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:3])
        raise PrincipalError(f"field 'acl' has unknown keys {shown} (only 'users', 'groups')")
    out: set[str] = set()
    total = 0
    for key, kind in _ACL_KEYS.items():
        items = value.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise PrincipalError(f"field 'acl.{key}' must be an array, got {_kind(items)}")
        total += len(items)
        if total > MAX_ACL_PRINCIPALS:
            raise PrincipalError(
                f"field 'acl' names over {MAX_ACL_PRINCIPALS} users and groups", "AclTooLarge"
            )
        for n, item in enumerate(items):
            out.add(principal(kind, check_id(item, f"acl.{key}[{n}]")))
    return tuple(sorted(out)) if out else (NOBODY,)


def acl_to_event(acl: Iterable[str] | None) -> dict[str, list[str]] | None:
    """The event's `acl` field for parsed principals (the inverse of `parse_acl`)."""
    if acl is None:
        return None
    field: dict[str, list[str]] = {"users": [], "groups": []}
    for item in sorted(set(acl)):
        kind, _, ident = item.partition(":")
        if kind == USER:
            field["users"].append(ident)
        elif kind == GROUP:
            field["groups"].append(ident)
    return field


def parse_principal_list(text: str, name: str) -> tuple[str, ...]:
    """Principals of a gateway header: `user:alice,group:eng` or a JSON array of strings
    (for ids holding commas). Sorted and unique; PrincipalError when malformed or too big."""
    if len(text) > MAX_HEADER_CHARS:
        raise PrincipalError(f"{name} is {len(text)} characters, over {MAX_HEADER_CHARS}")
    stripped = text.strip()
    items: list[Any]
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError):
            raise PrincipalError(f"{name} starts with '[' but is not a JSON array") from None
        if not isinstance(parsed, list):
            raise PrincipalError(f"{name} must be a JSON array of strings")
        items = parsed
    else:
        items = [p.strip() for p in stripped.split(",")] if stripped else []
    if len(items) > MAX_CALLER_PRINCIPALS:
        raise PrincipalError(f"{name} names over {MAX_CALLER_PRINCIPALS} principals")
    return tuple(sorted({check_principal(p, f"{name} item") for p in items}))


def parse_grant(spec: str, name: str = "key") -> tuple[str, tuple[str, ...]]:
    """An API key's grant `tenant[|principal...]` -> (tenant, sorted principals). The tenant is
    not checked here (see `core.tenants`); principals are, and may not hold `|` or `,`."""
    tenant, *rest = spec.split("|")
    if len(rest) > MAX_CALLER_PRINCIPALS:
        raise PrincipalError(f"{name} names over {MAX_CALLER_PRINCIPALS} principals")
    principals = set()
    for n, item in enumerate(rest, 1):
        if "," in item:
            raise PrincipalError(f"principal #{n} of {name} holds ','")
        principals.add(check_principal(item, f"principal #{n} of {name}"))
    return tenant, tuple(sorted(principals))


def grant_spec(tenant: str, principals: Iterable[str]) -> str:
    """The canonical grant string `tenant|p1|p2` (principals sorted, unique)."""
    return "|".join([tenant, *sorted(set(principals))])
