"""Bearer API keys map to tenants; the tenant scopes every query on the server side."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    authenticated: bool


class Unauthorized(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def resolve_caller(authorization: str | None, keys: Mapping[str, str], enabled: bool) -> Caller:
    """Find the tenant of a bearer key; every key is compared in constant time."""
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
    tenant: str | None = None
    for key, key_tenant in keys.items():
        if hmac.compare_digest(hashlib.sha256(key.encode()).digest(), offered):
            tenant = key_tenant
    if tenant is None:
        raise Unauthorized("invalid API key")
    return Caller(tenant, authenticated=True)
