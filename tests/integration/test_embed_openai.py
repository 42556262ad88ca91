"""The ``openai`` embedding backend against a real endpoint: `freshrag.api.embed_server` serving
the real bundled model over `/v1/embeddings` (uvicorn on a free loopback port), read through the
real openai client. Vectors equal the local torch backend's, batches are split, a failing
endpoint is retried, ingest -> search works end to end on real Kafka, and `freshrag embed-server`
runs as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from freshrag.api.embed_server import BUNDLED_MODEL_NAME, create_embed_app
from freshrag.core.embed_backends import BackendUnavailableError, RemoteEmbedConfig
from freshrag.core.embedder import Embedder
from freshrag.core.settings import load_settings
from freshrag.core.sparse import Bm25Encoder
from freshrag.retrieve.contract import DENSE_DIM, SearchFilter
from freshrag.retrieve.edge_store import EdgeStore
from freshrag.retrieve.search import HybridSearcher, SearchRequest
from tests.conftest import ROOT, free_port
from tests.integration.harness import ApiServer, RunningFlow, event, index_state, produce, wait_for

pytestmark = [pytest.mark.integration]

SCIFACT = ROOT.parent / "shared/data/scifact/corpus.jsonl"


class Recorder:
    """ASGI wrapper around the real embed server: records the inputs of every embeddings
    request, and answers the next ones with the statuses queued in `fail` (fault injection)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sizes: list[int] = []
        self.failed: list[int] = []
        self.fail: deque[int] = deque()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/embeddings":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.fail:
            status = self.fail.popleft()
            self.failed.append(status)
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b'{"error": {"message": "x"}}'})
            return
        inputs = json.loads(body)["input"]
        self.sizes.append(1 if isinstance(inputs, str) else len(inputs))
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def reset(self) -> None:
        self.sizes.clear()
        self.failed.clear()
        self.fail.clear()


@pytest.fixture(scope="session")
def served(embedder: Embedder) -> Iterator[tuple[str, Recorder]]:
    """(base URL, recorder) of the embed server serving the session's torch embedder."""
    recorder = Recorder(create_embed_app(embedder, identity=str(embedder.describe()["model"])))
    with ApiServer(recorder, free_port()) as server:
        yield f"{server.url}/v1", recorder


def remote(url: str, **changes: Any) -> Embedder:
    config: dict[str, Any] = {
        "base_url": url,
        "model": BUNDLED_MODEL_NAME,
        "backoff_s": 0.05,
        "backoff_max_s": 0.2,
    }
    config.update(changes)
    return Embedder(backend="openai", remote=RemoteEmbedConfig(**config), query_cache_size=0)


def texts(n: int = 24) -> list[str]:
    """Paragraphs and sentences of the sample documents, then SciFact abstracts when present:
    short and long (past the 256-token window) real text."""
    out: list[str] = []
    for doc in sorted((ROOT / "samples/docs").glob("*.md")):
        paragraphs = [p.strip() for p in doc.read_text().split("\n\n") if len(p.strip()) > 40]
        out += paragraphs + [s.strip() for p in paragraphs for s in p.split(". ")[1:2]]
    if SCIFACT.exists():
        with SCIFACT.open() as fh:
            out += [json.loads(line)["text"] for _, line in zip(range(n), fh, strict=False)]
    assert len(out) >= n
    return out[::2][: n // 2] + out[1::2][: n - n // 2]


def cosines(a: list[list[float]], b: list[list[float]]) -> np.ndarray[Any, Any]:
    x, y = np.asarray(a), np.asarray(b)
    out: np.ndarray[Any, Any] = (x * y).sum(axis=1) / np.linalg.norm(x, axis=1)
    out /= np.linalg.norm(y, axis=1)
    return out


def test_vectors_equal_the_local_torch_backend(
    served: tuple[str, Recorder], embedder: Embedder
) -> None:
    url, recorder = served
    recorder.reset()
    client = remote(url)
    assert client.dimension == embedder.dimension == DENSE_DIM
    described = client.describe()
    assert described["backend"] == "openai" and described["dimension"] == DENSE_DIM
    assert described["model"] == f"{url.split('/')[2]}/{BUNDLED_MODEL_NAME}"
    assert embedder.describe()["model"] != described["model"]
    sample = texts()
    got = client.embed_documents(sample)
    assert cosines(got, embedder.embed_documents(sample)).min() > 0.999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    query = "how long do refunds take?"
    assert cosines([client.embed_query(query)], [embedder.embed_query(query)])[0] > 0.999
    assert client.count_tokens(sample) == embedder.count_tokens(sample)
    assert client.max_tokens == embedder.max_tokens


def test_batching_splits_large_inputs(served: tuple[str, Recorder], embedder: Embedder) -> None:
    url, recorder = served
    client = remote(url, batch_size=7)
    recorder.reset()
    sample = texts(24)
    got = client.embed_documents(sample)
    assert recorder.sizes == [7, 7, 7, 3]
    assert cosines(got, embedder.embed_documents(sample)).min() > 0.999


def test_503_then_ok_is_retried_and_a_dead_endpoint_fails_clearly(
    served: tuple[str, Recorder], embedder: Embedder
) -> None:
    url, recorder = served
    client = remote(url, max_retries=3)
    recorder.reset()
    recorder.fail.extend([503, 503])
    sample = texts(5)
    got = client.embed_documents(sample)
    assert recorder.failed == [503, 503] and recorder.sizes == [5]
    assert cosines(got, embedder.embed_documents(sample)).min() > 0.999

    recorder.reset()
    recorder.fail.extend([503] * 10)
    with pytest.raises(BackendUnavailableError, match=r"after 4 attempts in [0-9.]+ s: HTTP 503"):
        client.embed_documents(sample)
    assert recorder.failed == [503] * 4 and recorder.sizes == []
    recorder.reset()


@pytest.mark.kafka
def test_ingest_then_search_through_the_endpoint(
    served: tuple[str, Recorder],
    embedder: Embedder,
    kafka_bootstrap: str,
    make_topic: Any,
    tmp_path: Path,
) -> None:
    url, recorder = served
    topic = make_topic("docs-openai", partitions=1)
    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        embed_max_wait_ms=50,
        metrics_port=0,
        embed_backend="openai",
        embed_openai_base_url=url,
        embed_openai_model=BUNDLED_MODEL_NAME,
        embed_openai_batch_size=8,
    )
    client = Embedder.from_settings(settings)
    store = EdgeStore(tmp_path / "index", "freshrag")
    store.ensure_collection()
    recorder.reset()
    docs = {
        "cats": "Cats sleep sixteen hours a day and hunt at dawn.",
        "tax": "Corporate tax filings are due in April; late filings pay a penalty.",
        "refunds": "Refunds are paid to the original card within five business days.",
    }
    try:
        with RunningFlow(settings, store, client) as flow:
            produce(
                kafka_bootstrap,
                topic,
                [event(op="upsert", id=k, version=1, title=k, text=v) for k, v in docs.items()],
            )
            wait_for(lambda: len(index_state(store)) == 3, what="3 documents indexed")
            assert flow.counter("freshrag_ingest_events_total", op="upsert", outcome="applied") == 3
        assert sum(recorder.sizes) >= 3  # the chunks went through the endpoint
        searcher = HybridSearcher(store, client, Bm25Encoder())
        for doc, question in [
            ("cats", "how long do cats sleep?"),
            ("tax", "when are corporate taxes due?"),
            ("refunds", "how fast is my money returned?"),
        ]:
            result = searcher.search(
                SearchRequest(question, SearchFilter("default"), top_k=1, mode="dense")
            )
            assert [h.doc_id for h in result.hits] == [doc]
            # the stored vectors are the bundled model's: a local query finds the same document
            local = store.query_dense(embedder.embed_query(question), SearchFilter("default"), 1)
            assert local[0].doc_id == doc and local[0].score > 0.3
    finally:
        store.close()


@pytest.mark.slow
def test_embed_server_command(embedder: Embedder, tmp_path: Path) -> None:
    """`freshrag embed-server` as a process: health, models, errors, and a client's vectors."""
    port = free_port()
    log = (tmp_path / "embed-server.log").open("w")
    env = {
        **os.environ,
        "FRESHRAG_EMBED_BACKEND": "torch",
        "FRESHRAG_EMBED_THREADS": "1",
        "FRESHRAG_EMBED_SERVER_API_KEY": "server-key-123",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "freshrag.cli", "embed-server", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=180, what="embed-server ready")
        health = httpx.get(f"{base}/health").json()
        assert health["dimension"] == DENSE_DIM
        assert health["identity"] == embedder.describe()["model"]  # same files, same identity
        auth = {"Authorization": "Bearer server-key-123"}
        assert httpx.get(f"{base}/v1/models").status_code == 401
        models = httpx.get(f"{base}/v1/models", headers=auth).json()
        assert [m["id"] for m in models["data"]] == [BUNDLED_MODEL_NAME]
        wrong = httpx.post(
            f"{base}/v1/embeddings", json={"model": "other", "input": "x"}, headers=auth
        )
        assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"
        client = remote(f"{base}/v1", api_key=SecretStr("server-key-123"))
        sample = texts(6)
        got = client.embed_documents(sample)
        assert cosines(got, embedder.embed_documents(sample)).min() > 0.999
    finally:
        proc.terminate()
        proc.wait(timeout=30)
