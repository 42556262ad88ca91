"""Auth, bounds and error shapes of the app, with the services replaced by small fakes
(dependency injection; the real components are exercised in tests/integration/test_api.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from freshrag.api.app import create_app
from freshrag.api.auth import Unauthorized, resolve_caller
from freshrag.api.services import ApiMetrics
from freshrag.core.settings import load_settings
from freshrag.retrieve.contract import DocumentStatus


class FakeStore:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.principals: list[Sequence[str] | None] = []

    def document_status(
        self, tenant: str, doc_id: str, principals: Sequence[str] | None = None
    ) -> DocumentStatus | None:
        self.asked.append((tenant, doc_id))
        self.principals.append(principals)
        if doc_id == "known":
            return DocumentStatus(
                tenant, doc_id, 3, 2, "2026-11-28T00:00:00+00:00", "2026-11-27T00:00:00+00:00"
            )
        return None


def client(**overrides: Any) -> tuple[TestClient, FakeStore]:
    settings = load_settings(
        **{"api_keys": {"k-acme": "acme"}, "max_document_bytes": 1000, **overrides}
    )
    store = FakeStore()
    services: Any = SimpleNamespace(
        settings=settings, store=store, metrics=ApiMetrics(), producer=None
    )
    services.current = lambda: SimpleNamespace(name="t", store=store, searcher=None)
    return TestClient(create_app(settings, services)), store


def test_resolve_caller() -> None:
    keys = {"k1": "a", "k2": "b"}
    assert resolve_caller("Bearer k2", keys, True).tenant == "b"
    for header in (None, "", "Basic k1", "Bearer ", "Bearer nope"):
        with pytest.raises(Unauthorized):
            resolve_caller(header, keys, True)
    assert resolve_caller(None, keys, False).tenant == "default"


def test_key_scopes_reads_to_its_tenant() -> None:
    http, store = client()
    with http:
        assert http.get("/v1/documents/known").status_code == 401
        r = http.get("/v1/documents/known", headers={"Authorization": "Bearer k-acme"})
        assert r.status_code == 200 and r.json()["version"] == 3
        assert (
            http.get("/v1/documents/other", headers={"Authorization": "Bearer k-acme"}).status_code
            == 404
        )
    assert store.asked == [("acme", "known"), ("acme", "other")]


def test_auth_off_is_explicit_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    http, store = client(auth_enabled=False)
    with caplog.at_level(logging.WARNING, logger="freshrag.api"), http:
        assert http.get("/v1/documents/known").status_code == 200
    assert store.asked == [("default", "known")]
    assert any("authentication is OFF" in r.message for r in caplog.records)


def test_bounds_and_error_shapes() -> None:
    http, _ = client()
    auth = {"Authorization": "Bearer k-acme"}
    with http:
        r = http.post("/v1/search", headers=auth, json={"query": ""})
        assert r.status_code == 422 and r.json()["error"]["field"] == "query"
        r = http.post(
            "/v1/documents",
            headers={**auth, "content-type": "application/json"},
            content=b"x" * 200_000,
        )
        assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"
        r = http.post("/v1/documents", headers=auth, json={"id": "d", "text": "y" * 2000})
        assert r.status_code == 413 and r.json()["error"]["field"] == "text"
        r = http.post("/v1/documents", headers=auth, json={"id": "d", "text": "ok"})
        assert r.status_code == 503 and "disabled" in r.json()["error"]["message"]  # no producer
