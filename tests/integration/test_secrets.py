"""No secret in any log line, response body or settings dump over a realistic session (issue 10).

Real pieces: the app in-process on Qdrant Edge, the bundled embedder, Kafka and the local LLM.
Every logger is captured at DEBUG (freshrag's and the libraries': openai, httpx, confluent)
together with stdout/stderr, then searched for each API key, the LLM key and the Qdrant key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from freshrag.api.app import create_app
from freshrag.api.services import build_services
from freshrag.core.settings import SettingsError, load_settings
from freshrag.retrieve.edge_store import EdgeStore

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.llm]

KEY_A = "sk-tenant-a-Zq8Lr3Vx0Pw9"
KEY_B = "sk-tenant-b-Hc5Ty7Un2Mk4"
OPENAI_KEY = "sk-openai-Qe1Wr4Ty7Ui0"
QDRANT_KEY = "qdrant-key-Ao2Sd5Fg8Hj1"
SECRETS = (KEY_A, KEY_B, OPENAI_KEY, QDRANT_KEY)


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        # the whole key, and any 12-character piece of it (a truncated or prefixed echo)
        pieces = {secret[i : i + 12] for i in range(len(secret) - 11)}
        leaked = sorted(p for p in pieces if p in text)
        assert not leaked, f"{where} contains a secret piece {leaked[0]!r}"


def test_no_key_in_logs_bodies_or_settings_dumps(
    kafka_bootstrap: str,
    llm_base_url: str,
    embedder: Any,
    make_topic: Callable[..., str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, libraries included
    topic = make_topic("secrets")
    env = {
        "FRESHRAG_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHRAG_TOPIC": topic,
        "FRESHRAG_OPENAI_BASE_URL": llm_base_url,
        "FRESHRAG_OPENAI_API_KEY": OPENAI_KEY,
        "QDRANT_API_KEY": QDRANT_KEY,
        "FRESHRAG_API_KEYS": f"{KEY_A}=tenant-a,{KEY_B}=tenant-b",
        "FRESHRAG_INDEX_PATH": str(tmp_path / "index"),
        "FRESHRAG_METRICS_PORT": "0",
        "FRESHRAG_CHAT_MAX_TOKENS": "16",
        "FRESHRAG_LLM_MAX_RETRIES": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    logging.getLogger("freshrag").info("settings: %s", settings.safe_summary())
    store = EdgeStore(settings.index_path, settings.collection)
    store.ensure_collection()
    services = build_services(settings, store=store, embedder=embedder)
    bodies: list[str] = []
    A = {"Authorization": f"Bearer {KEY_A}"}
    try:
        with TestClient(create_app(settings, services)) as http:

            def call(method: str, url: str, **kwargs: Any) -> Any:
                r = http.request(method, url, **kwargs)
                bodies.append(f"{method} {url} -> {r.status_code} {dict(r.headers)} {r.text}")
                return r

            # authentication failures, near misses of a real key included
            for header in (
                f"Bearer {KEY_A}x",
                f"Bearer {KEY_A[:-1]}",
                f"Basic {KEY_A}",
                f"bearer  {KEY_B.upper()}",
                KEY_A,
            ):
                r = call(
                    "POST", "/v1/search", headers={"Authorization": header}, json={"query": "x"}
                )
                assert r.status_code == 401
            assert call("GET", "/v1/documents/x").status_code == 401
            # writes, reads, searches, chats (plain, streamed, OpenAI-style), bad input
            doc = {"id": "kb-1", "title": "Refunds", "text": "Refunds take 30 days.", "version": 1}
            assert call("POST", "/v1/documents", headers=A, json=doc).status_code == 202
            r = call(
                "POST", "/v1/documents", headers={**A, "Idempotency-Key": KEY_B}, json=doc
            )  # a careless client sends a key as an idempotency key: not echoed either
            assert r.status_code == 202
            assert call("DELETE", "/v1/documents/kb-2", headers=A).status_code == 202
            assert call("GET", "/v1/documents/kb-1", headers=A).status_code in (200, 404)
            assert (
                call("POST", "/v1/search", headers=A, json={"query": "refunds"}).status_code == 200
            )
            r = call(
                "POST", "/v1/search", headers=A, json={"query": "x", "filters": {"tenant": KEY_B}}
            )
            assert r.status_code == 422
            r = call("POST", "/v1/search", headers=A, json={"query": KEY_B * 200})
            assert r.status_code == 422
            for stream in (False, True):
                r = call(
                    "POST",
                    "/v1/chat",
                    headers=A,
                    json={"question": "How long do refunds take?", "stream": stream},
                )
                assert r.status_code in (200, 502, 503)
            r = call(
                "POST",
                "/v1/chat/completions",
                headers=A,
                json={"model": "freshrag", "messages": [{"role": "user", "content": "refunds?"}]},
            )
            assert r.status_code in (200, 502, 503)
            call("GET", "/readyz")
            call("GET", "/readyz", headers=A)
            call("GET", "/metrics")
            call("GET", "/openapi.json")
    finally:
        services.close()
        store.close()

    # settings dumps: the CLI, and a start-up failure on a bad tenant
    from freshrag.cli import app as cli

    result = CliRunner().invoke(cli, ["settings"])
    assert result.exit_code == 0, result.output
    dumped = json.loads(result.output)
    assert dumped["api_keys"] == ["tenant-a", "tenant-b"]
    monkeypatch.setenv("FRESHRAG_API_KEYS", f"{KEY_A}=tenant-a,{KEY_B}=bad tenant!")
    with pytest.raises(SettingsError) as bad:
        load_settings()
    assert "bad tenant!" in str(bad.value) and "key #2" in str(bad.value)

    captured = capfd.readouterr()
    logs = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )
    assert len(caplog.records) > 20 and len(bodies) == 20
    assert_no_secret(logs, "a log line")
    assert_no_secret(captured.out + captured.err, "stdout/stderr")
    assert_no_secret("\n".join(bodies), "a response")
    assert_no_secret(result.output, "freshrag settings")
    assert_no_secret(str(bad.value), "the settings error")
