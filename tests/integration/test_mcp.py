"""The MCP server on real components, driven by the `mcp` SDK's own client over both transports:
streamable HTTP at /mcp of the API app (real Kafka, flow, embedder, Qdrant Edge) and stdio
(`python -m freshrag.cli mcp` as a process over Qdrant server, with an in-test flow)."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from freshrag.api.app import create_app
from freshrag.api.services import build_services
from freshrag.core.settings import Settings, load_settings
from freshrag.ingest.runner import WatermarkPublisher
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.server_store import QdrantServerStore
from tests.conftest import ROOT, free_port
from tests.integration.harness import ApiServer, RunningFlow

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

KEY_A, KEY_B = "mcp-key-tenant-a-0123456789", "mcp-key-tenant-b-9876543210"
KEY_ALICE = "mcp-key-alice-5555555555"
TOOLS = {"search", "fetch_document", "upsert_document", "delete_document", "wait_for", "freshness"}
# Unique words: a long document the chunker cuts into several overlapping chunks, whose text
# fetch_document must give back word for word.
LONG = " ".join(f"w{i}x{(i * 7919) % 10007}" for i in range(900))


def _settings(kafka_bootstrap: str, topic: str, **extra: Any) -> Settings:
    return load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        api_keys={KEY_A: "tenant-a", KEY_B: "tenant-b", KEY_ALICE: "tenant-a|user:alice"},
        embed_max_wait_ms=50,
        metrics_port=0,
        max_document_bytes=40_000,
        consistency_timeout_s=60,
        **extra,
    )


def _topic(kafka_bootstrap: str, name: str) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"mcp-{name}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 2)])[topic].result(30)
    return topic


def body(result: Any) -> dict[str, Any]:
    """A tool result's JSON (the text content; the structured content says the same)."""
    data = json.loads(result.content[0].text)
    assert result.structured_content == data
    return dict(data)


def ok(result: Any) -> dict[str, Any]:
    data = body(result)
    assert not result.is_error, data
    return data


def failed(result: Any, status: int) -> dict[str, Any]:
    data = body(result)
    assert result.is_error, data
    assert data["status"] == status, data
    assert {"type", "message"} <= set(data["error"]), data
    return dict(data["error"])


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, and their causes."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in leaves(e)]
    return [exc, *(leaves(exc.__cause__) if exc.__cause__ is not None else [])]


@asynccontextmanager
async def http_session(url: str, key: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    async with (
        create_mcp_http_client(headers=headers) as client,
        streamable_http_client(f"{url}/mcp", http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def write_wait_search_fetch_delete(a: ClientSession, b: ClientSession) -> None:
    """The scenario both transports must pass: write, wait on the token, search, fetch, delete;
    another tenant sees nothing of it."""
    listed = await a.list_tools()
    assert {t.name for t in listed.tools} == TOOLS
    doc = f"mcp/{uuid.uuid4().hex[:8]}"
    text = "The quasar lighthouse beams teal signals across the Orkney archipelago at dusk."
    w = ok(
        await a.call_tool(
            "upsert_document",
            {"id": doc, "title": "Quasar lighthouse", "text": text, "metadata": {"k": "v"}},
        )
    )
    assert w["op"] == "upsert" and w["consistency_token"] == f"{w['partition']}:{w['offset']}"
    waited = ok(await a.call_tool("wait_for", {"token": w["consistency_token"]}))
    assert waited["applied"] is True
    assert waited["watermark"][str(w["partition"])] > w["offset"]
    found = ok(await a.call_tool("search", {"query": "teal quasar lighthouse", "top_k": 3}))
    assert found["hits"] and found["hits"][0]["doc_id"] == doc
    fetched = ok(await a.call_tool("fetch_document", {"id": doc}))
    assert fetched["text"] == text and fetched["title"] == "Quasar lighthouse"
    assert fetched["version"] > 0 and fetched["updated_at"] and fetched["metadata"] == {"k": "v"}

    # a long document: several chunks whose overlaps fetch_document removes
    long_id = f"{doc}-long"
    w2 = ok(await a.call_tool("upsert_document", {"id": long_id, "text": LONG, "title": "Long"}))
    # search with the token: never answers before the write is applied
    hit = ok(
        await a.call_tool(
            "search",
            {
                "query": "w5x" + str((5 * 7919) % 10007),
                "consistency_token": w2["consistency_token"],
            },
        )
    )
    assert any(h["doc_id"] == long_id for h in hit["hits"])
    long_doc = ok(await a.call_tool("fetch_document", {"id": long_id}))
    assert long_doc["chunk_count"] > 2
    assert long_doc["text"].split() == LONG.split()

    # tenant B sees none of it
    failed(await b.call_tool("fetch_document", {"id": doc}), 404)
    other = ok(await b.call_tool("search", {"query": "teal quasar lighthouse", "top_k": 10}))
    assert all(h["doc_id"] != doc for h in other["hits"])
    failed(await b.call_tool("wait_for", {"token": "0:x"}), 422)

    d = ok(await a.call_tool("delete_document", {"id": doc}))
    assert d["op"] == "delete"
    after = ok(
        await a.call_tool(
            "search",
            {"query": "teal quasar lighthouse", "consistency_token": d["consistency_token"]},
        )
    )
    assert all(h["doc_id"] != doc for h in after["hits"])
    failed(await a.call_tool("fetch_document", {"id": doc}), 404)
    # the GET /v1/freshness report (its figures are tested there): the caller's tenant, and a
    # watermark past the delete just applied
    fresh = ok(await a.call_tool("freshness", {"window_s": 60}))
    assert fresh["tenant"] == "tenant-a"
    marks = {p["partition"]: p["watermark"] for p in fresh["partitions"]}
    assert marks[d["partition"]] > d["offset"]
    failed(await a.call_tool("freshness", {"window_s": 0}), 422)


# --- streamable HTTP ------------------------------------------------------------------------


class HttpStack:
    def __init__(self, url: str, settings: Settings) -> None:
        self.url, self.settings = url, settings


@pytest.fixture(scope="module")
def http_stack(
    kafka_bootstrap: str, embedder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpStack]:
    tmp = tmp_path_factory.mktemp("mcp-http")
    settings = _settings(kafka_bootstrap, _topic(kafka_bootstrap, "http"))
    store = EdgeStore(tmp / "index", settings.collection)
    store.ensure_collection()
    flow = RunningFlow(settings, store, embedder)
    # the in-process flow's watermarks, as `freshrag up` wires them: tokens wait on these
    services = build_services(
        settings, store=store, embedder=embedder, watermarks=flow.parts.watermarks.snapshot
    )
    app = create_app(settings, services)
    with flow, ApiServer(app, free_port()) as server:
        yield HttpStack(server.url, settings)
    services.close()
    store.close()


def test_http_write_wait_search_fetch_delete(http_stack: HttpStack) -> None:
    async def run() -> None:
        async with (
            http_session(http_stack.url, KEY_A) as a,
            http_session(http_stack.url, KEY_B) as b,
        ):
            await write_wait_search_fetch_delete(a, b)

    anyio.run(run)


def test_http_document_permissions(http_stack: HttpStack) -> None:
    """A document with an `acl` is readable through MCP only by a key holding one of its
    principals: search and fetch_document of other keys of the tenant do not see it."""

    async def run() -> None:
        async with (
            http_session(http_stack.url, KEY_A) as a,
            http_session(http_stack.url, KEY_ALICE) as alice,
        ):
            doc = f"acl/{uuid.uuid4().hex[:8]}"
            text = "Alice's private plan: the marmalade vault opens on Thursday."
            w = ok(
                await a.call_tool(
                    "upsert_document", {"id": doc, "text": text, "acl": {"users": ["alice"]}}
                )
            )
            ok(await a.call_tool("wait_for", {"token": w["consistency_token"]}))
            assert ok(await alice.call_tool("fetch_document", {"id": doc}))["text"] == text
            hits = ok(await alice.call_tool("search", {"query": "marmalade vault Thursday"}))
            assert hits["hits"] and hits["hits"][0]["doc_id"] == doc
            failed(await a.call_tool("fetch_document", {"id": doc}), 404)
            hits = ok(await a.call_tool("search", {"query": "marmalade vault Thursday"}))
            assert all(h["doc_id"] != doc for h in hits["hits"])

    anyio.run(run)


@pytest.mark.parametrize("key", [None, "not-a-key", KEY_A + "x"])
def test_http_refuses_missing_or_wrong_key(http_stack: HttpStack, key: str | None) -> None:
    async def run() -> None:
        async with http_session(http_stack.url, key):
            pass

    with pytest.raises(BaseException) as refused:  # the SDK's own error for the 401
        anyio.run(run)
    # the SDK reports an HTTP error answer as an MCPError; the status is checked just below
    assert any(isinstance(e, MCPError) for e in leaves(refused.value)), refused.value
    # what a plain HTTP client sees: the REST 401 body
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    r = httpx.post(
        f"{http_stack.url}/mcp",
        headers={**headers, "Accept": "application/json, text/event-stream"},
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
    )
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
    assert r.headers["WWW-Authenticate"] == "Bearer"


def test_http_bad_arguments_are_rest_errors(http_stack: HttpStack) -> None:
    async def run() -> None:
        async with http_session(http_stack.url, KEY_A) as a:
            e = failed(await a.call_tool("search", {"query": "x", "top_k": 0}), 422)
            assert e["type"] == "invalid" and e["field"] == "top_k"
            e = failed(await a.call_tool("search", {"query": "x", "top_k": "5"}), 422)
            assert e["field"] == "top_k"  # strict JSON types, as on REST
            e = failed(await a.call_tool("search", {"query": "x", "surprise": 1}), 422)
            assert e["field"] == "surprise"
            e = failed(await a.call_tool("search", {}), 422)
            assert e["field"] == "query"
            e = failed(await a.call_tool("upsert_document", {"id": "x", "text": ""}), 422)
            assert e["field"] == "text"
            big = "a" * (http_stack.settings.max_document_bytes + 1)
            e = failed(await a.call_tool("upsert_document", {"id": "x", "text": big}), 413)
            assert e["type"] == "payload_too_large"
            e = failed(await a.call_tool("wait_for", {"token": "zero"}), 422)
            assert e["field"] == "consistency_token"
            e = failed(await a.call_tool("wait_for", {"token": "0:1", "timeout_s": -1}), 422)
            assert e["field"] == "timeout_s"
            e = failed(
                await a.call_tool("wait_for", {"token": "0:999999999", "timeout_s": 0.3}), 504
            )
            assert e["type"] == "consistency_timeout" and "watermark" in e
            e = failed(await a.call_tool("fetch_document", {"id": ""}), 422)
            assert e["field"] == "id"
            e = failed(await a.call_tool("delete_document", {"id": "x", "version": -1}), 422)
            assert e["field"] == "version"

    anyio.run(run)


@pytest.fixture(scope="module")
def portal_session(http_stack: HttpStack) -> Iterator[tuple[BlockingPortal, ClientSession]]:
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(http_session(http_stack.url, KEY_A)) as session,
    ):
        yield portal, session


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    "query top_k filters fresh mode consistency_token id version token timeout_s "
    "idempotency_key text dedupe title metadata content_type acl updated_at".split()
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    tool=st.sampled_from(
        ["search", "fetch_document", "upsert_document", "delete_document", "wait_for", "freshness"]
    ),
    args=st.dictionaries(FIELDS, JSON, max_size=4),
)
def test_fuzzed_arguments_give_tool_errors_not_crashes(
    portal_session: tuple[BlockingPortal, ClientSession], tool: str, args: dict[str, Any]
) -> None:
    portal, session = portal_session
    if tool == "wait_for" and "timeout_s" not in args:
        args = {**args, "timeout_s": 0.2}  # a valid token far ahead must not wait long
    result = portal.call(session.call_tool, tool, args)
    data = body(result)  # JSON either way: never the SDK's crash text
    if result.is_error:
        assert 400 <= data["status"] < 600 and data["status"] != 500, data
        assert isinstance(data["error"]["type"], str) and data["error"]["message"]


# --- stdio ----------------------------------------------------------------------------------


def test_stdio_on_a_held_edge_shard_says_what_to_do(tmp_path: Any) -> None:
    """`freshrag mcp` over an Edge shard another process holds: a clear error, exit 2."""
    import subprocess

    store = EdgeStore(tmp_path / "index", "freshrag")
    store.ensure_collection()  # this test holds the shard lock, as `freshrag up` would
    try:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FRESHRAG_", "QDRANT_"))},
            "FRESHRAG_INDEX_PATH": str(tmp_path / "index"),
            "FRESHRAG_API_KEYS": f"{KEY_A}=tenant-a",
            "FRESHRAG_MCP_API_KEY": KEY_A,
        }
        done = subprocess.run(
            [sys.executable, "-m", "freshrag.cli", "mcp"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
    finally:
        store.close()
    assert done.returncode == 2, done.stderr
    assert "Qdrant server" in done.stderr and "/mcp" in done.stderr
    assert KEY_A not in done.stderr


def test_stdio_write_wait_search_fetch_delete(
    kafka_bootstrap: str,
    embedder: Any,
    qdrant_server: tuple[str, str | None],
) -> None:
    """`freshrag mcp` as its own process over Qdrant server; an in-test flow indexes what it
    writes to Kafka into the same collection."""
    url, qkey = qdrant_server
    collection = f"mcp{uuid.uuid4().hex[:8]}"
    settings = _settings(
        kafka_bootstrap, _topic(kafka_bootstrap, "stdio"), qdrant_url=url, collection=collection
    )
    store = QdrantServerStore.from_url(url, qkey, collection)
    store.ensure_collection()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FRESHRAG_")},
        "FRESHRAG_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FRESHRAG_TOPIC": settings.topic,
        "FRESHRAG_DLQ_TOPIC": settings.dlq_topic,
        "FRESHRAG_QDRANT_URL": url,
        "FRESHRAG_COLLECTION": collection,
        "FRESHRAG_API_KEYS": f"{KEY_A}=tenant-a,{KEY_B}=tenant-b",
        "FRESHRAG_CONSISTENCY_TIMEOUT_S": "60",
        "FRESHRAG_MAX_DOCUMENT_BYTES": "40000",
        "FRESHRAG_METRICS_PORT": "0",
    }
    if qkey:
        env["FRESHRAG_QDRANT_API_KEY"] = qkey

    def params(key: str) -> StdioServerParameters:
        return StdioServerParameters(
            command=sys.executable,
            args=["-m", "freshrag.cli", "mcp"],
            env={**env, "FRESHRAG_MCP_API_KEY": key},
            cwd=str(ROOT),
        )

    @asynccontextmanager
    async def stdio_session(key: str) -> AsyncIterator[ClientSession]:
        async with (
            stdio_client(params(key)) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session

    async def run() -> None:
        async with stdio_session(KEY_A) as a, stdio_session(KEY_B) as b:
            await write_wait_search_fetch_delete(a, b)

    flow = RunningFlow(settings, store, embedder)
    # what `freshrag ingest` does: publish the indexed watermarks through the store, where the
    # stdio server's `wait_for` and consistency tokens read them
    publisher = WatermarkPublisher(store, settings.topic, flow.parts.watermarks.snapshot)
    try:
        with flow:
            publisher.start()
            try:
                anyio.run(run)
            finally:
                publisher.stop()
    finally:
        store.close()

    # a wrong key: the process refuses to start (exit 2, the reason on stderr, no key echoed)
    import subprocess

    bad = subprocess.run(
        [sys.executable, "-m", "freshrag.cli", "mcp"],
        env={**env, "FRESHRAG_MCP_API_KEY": "wrong-key-123"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert bad.returncode == 2 and "FRESHRAG_MCP_API_KEY" in bad.stderr
    assert "wrong-key-123" not in bad.stderr
