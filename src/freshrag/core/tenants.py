"""Tenant names, shared by change events, API keys and every filter (pure, no imports).

A tenant is 1-64 characters of A-Z a-z 0-9 `_` `.` `-`; it is stored in every point's payload
and scopes every read, so the API keys' tenants must match exactly what events may carry.
"""

from __future__ import annotations

import re

DEFAULT_TENANT = "default"
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TENANT_RULE = "1-64 characters of A-Z a-z 0-9 _ . -"


def is_valid_tenant(value: object) -> bool:
    return isinstance(value, str) and TENANT_PATTERN.fullmatch(value) is not None
