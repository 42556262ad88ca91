"""Bearer API keys map to a tenant and principals; both scope every query on the server side.

A key's grant is `tenant[|user:<id>|group:<id>...]` (settings `api_keys`). With
`trust_principals_header` on, the `X-Freshrag-Principals` header of an authenticated request
adds principals (a gateway that authenticated the end user sets it); the tenant is always the
key's. Every caller holds EVERYONE ("*"), so documents without an `acl` stay readable.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from freshrag.core.principals import (
    EVERYONE,
    PRINCIPALS_HEADER,
    PrincipalError,
    parse_grant,
    parse_principal_list,
)

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    authenticated: bool
    # what the caller may read: EVERYONE plus its key's (and trusted header's) principals
    principals: tuple[str, ...] = (EVERYONE,)


class Unauthorized(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadPrincipals(Exception):
    """A trusted principals header that cannot be read (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def resolve_caller(
    authorization: str | None,
    keys: Mapping[str, str],
    enabled: bool,
    principals_header: str | None = None,
    trust_header: bool = False,
) -> Caller:
    """Find the grant of a bearer key; every key is compared in constant time. The header's
    principals count only when `trust_header` is on and the key is valid."""
    if not enabled:
        return Caller(DEFAULT_TENANT, authenticated=False)
    if not authorization:
        raise Unauthorized("missing Authorization header (expected 'Bearer <api key>')")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <api key>'")
    # Digests have one length, so compare_digest's time tells nothing about the key's length
    # or content; every key is compared, so the time does not depend on which one matched.
    offered = hashlib.sha256(token.strip().encode()).digest()
    grant: str | None = None
    for key, key_grant in keys.items():
        if hmac.compare_digest(hashlib.sha256(key.encode()).digest(), offered):
            grant = key_grant
    if grant is None:
        raise Unauthorized("invalid API key")
    tenant, principals = parse_grant(grant)  # checked at start-up (settings)
    extra: tuple[str, ...] = ()
    if trust_header and principals_header is not None:
        try:
            extra = parse_principal_list(principals_header, f"header {PRINCIPALS_HEADER}")
        except PrincipalError as exc:
            raise BadPrincipals(str(exc)) from None
    return Caller(
        tenant, authenticated=True, principals=tuple(sorted({EVERYONE, *principals, *extra}))
    )
