"""No stalls: waits that can last (consistency tokens, a hanging LLM) hold no threadpool thread,
chats are admitted per tenant and in total (429 + Retry-After past the limits), and a query's
embedding goes ahead of an ingest batch. Real uvicorn, the real embedder, real Qdrant Edge; the
hanging LLM is a local socket that accepts connections and never answers."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pytest

from freshrag.api.app import create_app
from freshrag.api.services import build_services
from freshrag.core.settings import Settings, load_settings
from freshrag.core.sparse import Bm25Encoder
from freshrag.retrieve.contract import ChunkPoint
from freshrag.retrieve.edge_store import EdgeStore
from tests.conftest import free_port
from tests.integration.harness import ApiServer, wait_for

pytestmark = pytest.mark.integration

KEYS = {"key-acme-0123456789": "acme", "key-other-0123456789": "other", "key-third-012345": "t3"}
ACME, OTHER, THIRD = ({"Authorization": f"Bearer {k}"} for k in KEYS)
NEVER = "0:999999999"
DOCS = {
    "acme": ("quasar", "The quasar catalogue lists blazar jets and their redshifts."),
    "other": ("glacier", "The glacier survey measured ice retreat along the fjord."),
}


@pytest.fixture(scope="module")
def store(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStore]:
    """One indexed chunk per tenant, written straight to a real Edge shard."""
    store = EdgeStore(tmp_path_factory.mktemp("nostall") / "index", "nostall")
    store.ensure_collection()
    now = datetime.now(UTC)
    texts = [text for _, text in DOCS.values()]
    dense = embedder.embed_documents(texts)
    sparse = Bm25Encoder().embed_documents(texts)
    store.upsert_chunks(
        [
            ChunkPoint(
                tenant=tenant,
                doc_id=doc_id,
                version=1,
                chunk_index=0,
                chunk_count=1,
                text=text,
                title=doc_id.title(),
                url=None,
                source="test",
                updated_at=now,
                indexed_at=now,
                metadata={},
                dense=d,
                sparse=s,
            )
            for (tenant, (doc_id, text)), d, s in zip(DOCS.items(), dense, sparse, strict=True)
        ]
    )
    yield store
    store.close()


def settings_for(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "api_keys": KEYS,
        "metrics_port": 0,
        "llm_max_retries": 0,
        "chat_min_score": -1.0,  # any source goes to the LLM: the chat must reach it
        "chat_max_tokens": 32,
    }
    return load_settings(**{**base, **overrides})


class StalledLLM:
    """An 'OpenAI endpoint' that accepts connections and never answers, until `hang_up`."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def hang_up(self) -> None:
        """Close every connection and stop listening: the LLM is now unreachable."""
        with contextlib.suppress(OSError):  # already shut down
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self._thread.join(timeout=10)
        for conn in self.accepted:
            conn.close()

    def __enter__(self) -> StalledLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hang_up()


async def until(
    condition: Callable[[], bool], what: str, tasks: list[Any], timeout: float = 120
) -> None:
    """Await a server-side condition; fail early if a request that should wait has finished."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        finished = [t.result() for t in tasks if t.done() and not t.exception()]
        assert not finished, f"a waiting request finished early: {finished[0].text[:300]}"
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def client(server: ApiServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=500)
    )


def test_healthz_and_search_answer_while_200_requests_wait_on_tokens(
    store: EdgeStore, embedder: Any
) -> None:
    marks = {"0": 5}
    settings = settings_for(consistency_timeout_s=300, max_consistency_waits=200)
    services = build_services(
        settings, store=store, embedder=embedder, with_producer=False, watermarks=lambda: marks
    )
    app = create_app(settings, services)

    async def scenario() -> None:
        async with client(server) as http:
            waiting = [
                asyncio.create_task(
                    http.post(
                        "/v1/search",
                        headers=ACME,
                        json={"query": f"quasar {i}", "consistency_token": NEVER},
                    )
                )
                for i in range(200)
            ]
            await until(lambda: app.state.limits.waits.in_use == 200, "200 waiters", waiting)

            health = await http.get("/healthz")
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            search = await http.post("/v1/search", headers=ACME, json={"query": "blazar jets"})
            assert search.status_code == 200 and search.json()["hits"][0]["doc_id"] == "quasar"
            over = await http.post(
                "/v1/search", headers=ACME, json={"query": "x", "consistency_token": NEVER}
            )
            assert over.status_code == 429, over.text
            assert int(over.headers["retry-after"]) >= 1
            error = over.json()["error"]
            assert error["type"] == "rate_limited" and error["limit"] == 200
            # ordering, not time: every waiter was still waiting when those were answered
            assert not any(t.done() for t in waiting)

            marks["0"] = 10**9  # the index reaches the token: every waiter answers
            answers = await asyncio.gather(*waiting)
            assert [r.status_code for r in answers] == [200] * 200
            assert all(r.json()["index"]["watermark"] == {"0": 10**9} for r in answers)
            assert app.state.limits.waits.in_use == 0

    with ApiServer(app, free_port()) as server:
        asyncio.run(scenario())
    services.close()


def test_healthz_and_search_answer_while_200_chats_wait_on_a_stalled_llm(
    store: EdgeStore, embedder: Any
) -> None:
    with StalledLLM() as llm:
        settings = settings_for(
            openai_base_url=llm.url,
            llm_timeout_s=300,
            max_concurrent_chat=200,
            max_concurrent_chat_per_tenant=200,
        )
        services = build_services(settings, store=store, embedder=embedder, with_producer=False)
        app = create_app(settings, services)

        async def scenario() -> None:
            async with client(server) as http:
                chats = [
                    asyncio.create_task(
                        http.post(
                            "/v1/chat",
                            headers=ACME,
                            json={"question": "What do blazar jets show?", "stream": i % 2 == 1},
                        )
                    )
                    for i in range(200)
                ]
                await until(lambda: len(llm.accepted) >= 200, "200 LLM connections", chats)

                assert (await http.get("/healthz")).status_code == 200
                search = await http.post("/v1/search", headers=ACME, json={"query": "quasar"})
                assert search.status_code == 200 and search.json()["hits"]
                over = await http.post(
                    "/v1/chat/completions",
                    headers=ACME,
                    json={"model": "freshrag", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert over.status_code == 429 and over.headers["retry-after"]
                assert app.state.limits.chat.in_use == 200
                assert not any(t.done() for t in chats)  # all 200 still hanging on the LLM

                llm.hang_up()
                answers = await asyncio.gather(*chats)
                assert {r.status_code for r in answers} == {503}, answers[0].text
                body = answers[0].json()
                assert body["error"]["upstream"] == llm.url
                assert body["sources"][0]["doc_id"] == "quasar"
                await until(lambda: app.state.limits.chat.in_use == 0, "slots back", [])

        with ApiServer(app, free_port()) as server:
            asyncio.run(scenario())
        services.close()


def test_chat_limits_per_tenant_and_in_total_answer_429_with_retry_after(
    store: EdgeStore, embedder: Any
) -> None:
    with StalledLLM() as llm:
        settings = settings_for(
            openai_base_url=llm.url,
            llm_timeout_s=300,
            max_concurrent_chat=2,
            max_concurrent_chat_per_tenant=1,
        )
        services = build_services(settings, store=store, embedder=embedder, with_producer=False)
        app = create_app(settings, services)

        async def scenario() -> None:
            async with client(server) as http:
                acme = asyncio.create_task(
                    http.post("/v1/chat", headers=ACME, json={"question": "blazar jets?"})
                )
                await until(lambda: len(llm.accepted) >= 1, "acme's LLM call", [acme])

                r = await http.post("/v1/chat", headers=ACME, json={"question": "again?"})
                assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["type"] == "rate_limited"
                assert r.json()["error"]["scope"] == "tenant"
                r = await http.post(
                    "/v1/chat/completions",
                    headers=ACME,
                    json={"model": "freshrag", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert r.status_code == 429 and r.headers["retry-after"]
                error = r.json()["error"]  # OpenAI's error shape
                assert error["code"] == "rate_limit_exceeded" and error["message"]
                assert "param" in error and error["type"] == "rate_limit_exceeded"

                other = asyncio.create_task(
                    http.post(
                        "/v1/chat",
                        headers=OTHER,
                        json={"question": "glacier survey?", "stream": True},
                    )
                )
                await until(lambda: len(llm.accepted) >= 2, "other's LLM call", [acme, other])
                r = await http.post("/v1/chat", headers=THIRD, json={"question": "anything?"})
                assert r.status_code == 429 and r.json()["error"]["scope"] == "total"
                assert (await http.get("/healthz")).status_code == 200
                assert not acme.done() and not other.done()

                llm.hang_up()
                assert (await acme).status_code == 503
                assert (await other).status_code == 503
                await until(lambda: app.state.limits.chat.in_use == 0, "slots back", [])
                # the slots are free again: the next chat reaches the (now gone) LLM, no 429
                r = await http.post("/v1/chat", headers=ACME, json={"question": "blazar jets?"})
                assert r.status_code == 503, r.text

        with ApiServer(app, free_port()) as server:
            asyncio.run(scenario())
        services.close()


class HangingStream:
    """An OpenAI endpoint that starts a streamed answer (one token), then hangs; it records
    when the client closes the connection."""

    CHUNK = (
        'data: {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m", '
        '"choices": [{"index": 0, "delta": {"content": "Blazar"}, "finish_reason": null}]}\n\n'
    )

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.client_closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(body) < length:
            body += conn.recv(65536)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
            + self.CHUNK.encode()
        )
        while conn.recv(65536):  # hang: no more tokens; returns b"" once the client closes
            pass
        self.client_closed.set()
        conn.close()

    def close(self) -> None:
        self.sock.close()


def test_a_client_leaving_a_stream_frees_its_slot_and_closes_the_upstream_stream(
    store: EdgeStore, embedder: Any
) -> None:
    llm = HangingStream()
    settings = settings_for(
        openai_base_url=llm.url,
        llm_timeout_s=3,  # the hung read ends here; only then is the slot's thread free
        max_concurrent_chat=1,
        max_concurrent_chat_per_tenant=1,
    )
    services = build_services(settings, store=store, embedder=embedder, with_producer=False)
    app = create_app(settings, services)

    async def scenario() -> None:
        async with client(server) as http:
            async with http.stream(
                "POST",
                "/v1/chat",
                headers=ACME,
                json={"question": "What do blazar jets show?", "stream": True},
            ) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("event: token"):
                        break  # leave mid-answer: the response is closed
            await until(lambda: app.state.limits.chat.in_use == 0, "the slot back", [], 60)
            assert llm.client_closed.is_set()  # the upstream stream was closed by us
            r2 = await http.post("/v1/chat", headers=ACME, json={"question": "blazar?"})
            assert r2.status_code == 503, r2.text  # admitted again, no 429 (then times out)

    try:
        with ApiServer(app, free_port()) as server:
            asyncio.run(scenario())
    finally:
        llm.close()
        services.close()


def test_search_during_a_large_ingest_batch_goes_before_the_batch_ends(
    store: EdgeStore, embedder: Any
) -> None:
    settings = settings_for()
    services = build_services(settings, store=store, embedder=embedder, with_producer=False)
    app = create_app(settings, services)
    rng = np.random.default_rng(3)
    words = ["river", "granite", "orbit", "lantern", "copper", "meadow", "signal", "harbor"]
    texts = [" ".join(rng.choice(words, size=120)) + f" chunk {i}" for i in range(400)]
    trace: list[str] = []
    result: list[list[list[float]]] = []
    sub_batch, embedder.sub_batch_size = embedder.sub_batch_size, 16
    embedder.on_encode = lambda kind, _n: trace.append(kind)
    try:
        with ApiServer(app, free_port()) as server:
            batch = threading.Thread(target=lambda: result.append(embedder.embed_documents(texts)))
            batch.start()
            wait_for(lambda: "documents" in trace, timeout=120, what="the ingest batch started")
            r = httpx.post(
                f"{server.url}/v1/search",
                headers=ACME,
                json={"query": "what does the quasar catalogue list?"},
                timeout=300,
            )
            assert r.status_code == 200 and r.json()["hits"][0]["doc_id"] == "quasar"
            batch.join(timeout=600)
    finally:
        embedder.on_encode = None
        embedder.sub_batch_size = sub_batch
        services.close()

    sub_batches = math.ceil(len(texts) / 16)
    assert trace.count("documents") == sub_batches and trace.count("query") == 1
    waited, ran = trace.index("query_wait"), trace.index("query")
    # the query waited for at most the sub-batch that was running, not for the batch
    assert trace[waited:ran].count("documents") <= 1
    assert trace[:ran].count("documents") < sub_batches
    # sub-batching kept every vector in its input order
    vectors = result[0]
    assert len(vectors) == len(texts)
    for i in (0, 17, 399):
        alone = embedder.embed_documents([texts[i]])[0]
        assert float(np.dot(vectors[i], alone)) > 0.9999


def test_under_up_searches_use_their_own_model_while_an_ingest_batch_runs(
    store: EdgeStore, embedder: Any
) -> None:
    """FRESHRAG_QUERY_MODEL=separate (the default): the ingest embedder is busy with one big
    model call, and a search still answers before that call ends."""
    from freshrag.up import query_embedder

    assert query_embedder(settings_for(query_model="shared"), embedder) is embedder
    settings = settings_for()
    queries = query_embedder(settings, embedder)
    assert queries is not embedder
    services = build_services(settings, store=store, embedder=queries, with_producer=False)
    app = create_app(settings, services)
    texts = [f"ingest chunk {i} about lanterns, harbors and copper " * 12 for i in range(400)]
    trace: list[str] = []
    sub_batch, embedder.sub_batch_size = embedder.sub_batch_size, len(texts)  # one model call
    embedder.on_encode = lambda kind, _n: trace.append(kind)
    try:
        with ApiServer(app, free_port()) as server:
            batch = threading.Thread(target=embedder.embed_documents, args=(texts,))
            batch.start()
            wait_for(lambda: "documents_wait" in trace, what="the ingest batch started")
            r = httpx.post(
                f"{server.url}/v1/search",
                headers=ACME,
                json={"query": "which catalogue lists blazar jets?"},
                timeout=300,
            )
            done_during_batch = "documents" not in trace
            batch.join(timeout=600)
    finally:
        embedder.on_encode = None
        embedder.sub_batch_size = sub_batch
        services.close()
    assert r.status_code == 200 and r.json()["hits"][0]["doc_id"] == "quasar"
    assert done_during_batch, "the search waited for the ingest batch"
    assert trace == ["documents_wait", "documents"]  # the search never used the ingest model


def test_query_priority_is_bounded_so_ingest_keeps_moving(embedder: Any) -> None:
    """A flood of waiting queries lets a waiting sub-batch through after QUERY_STREAK of them."""
    from freshrag.core.embedder import QUERY_STREAK

    trace: list[str] = []
    embedder.on_encode = lambda kind, _n: trace.append(kind)
    sub_batch, embedder.sub_batch_size = embedder.sub_batch_size, 4
    texts = [f"ingest text number {i} about harbors and lanterns " * 8 for i in range(80)]
    stop = threading.Event()

    def flood() -> None:
        n = 0
        while not stop.is_set():
            embedder._encode([f"query {n} {threading.get_ident()}"], query=True)
            n += 1

    threads = [threading.Thread(target=flood) for _ in range(QUERY_STREAK + 4)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: trace.count("query") > 3 * QUERY_STREAK, what="the query flood")
        embedder.embed_documents(texts)  # finishes despite the flood
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        embedder.on_encode = None
        embedder.sub_batch_size = sub_batch
    waits = [i for i, kind in enumerate(trace) if kind == "documents_wait"]
    runs = [i for i, kind in enumerate(trace) if kind == "documents"]
    assert len(waits) == len(runs) == 20
    # while a sub-batch waits, at most QUERY_STREAK queries start (+1 already running)
    assert max(trace[w:r].count("query") for w, r in zip(waits, runs, strict=True)) <= (
        QUERY_STREAK + 1
    )
    assert sum(trace[w:r].count("query") for w, r in zip(waits, runs, strict=True)) > 0
