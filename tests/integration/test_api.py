"""The REST API on real components: Kafka, the ingest flow, the embedder, Qdrant Edge, the LLM."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from freshrag.api.app import create_app
from freshrag.api.services import build_services
from freshrag.core.settings import Settings, load_settings
from freshrag.retrieve.edge_store import EdgeStore
from tests.conftest import ROOT, free_port
from tests.integration.harness import ApiServer, RunningFlow, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.llm]

KEY_A, KEY_B = "key-tenant-a-0123456789", "key-tenant-b-9876543210"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}

DOCS = {
    "volcano": (
        "Volcano facts",
        "Mount Etna is an active volcano on Sicily. It erupts lava often.",
    ),
    "penguin": ("Penguins", "Emperor penguins breed during the Antarctic winter on sea ice."),
    "refunds": ("Refund policy", "Customers can return hardware within 30 days for a full refund."),
}


class Stack:
    def __init__(self, settings: Settings, store: EdgeStore, flow: RunningFlow, url: str) -> None:
        self.settings, self.store, self.flow, self.url = settings, store, flow, url
        self.http = httpx.Client(base_url=url, timeout=120)

    def write(
        self, key: dict[str, str], doc_id: str, title: str, text: str, **extra: Any
    ) -> dict[str, Any]:
        r = self.http.post(
            "/v1/documents", headers=key, json={"id": doc_id, "title": title, "text": text, **extra}
        )
        assert r.status_code == 202, r.text
        return dict(r.json())

    def wait_indexed(
        self, key: dict[str, str], doc_id: str, version: int | None = None
    ) -> dict[str, Any]:
        """Poll GET /v1/documents/{id} until the flow has indexed it (no sleeps)."""
        seen: dict[str, Any] = {}

        def indexed() -> bool:
            r = self.http.get(f"/v1/documents/{doc_id}", headers=key)
            if r.status_code == 200:
                seen.update(r.json())
                return version is None or seen["version"] >= version
            assert r.status_code == 404, r.text
            return False

        wait_for(indexed, timeout=60, what=f"{doc_id} indexed")
        return seen


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, llm_base_url: str, embedder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    from confluent_kafka.admin import AdminClient, NewTopic

    tmp = tmp_path_factory.mktemp("api")
    topic = f"api-{tmp.name}-{uuid.uuid4().hex[:8]}"  # unique on a reused broker
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 2)])[topic].result(30)
    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        openai_base_url=llm_base_url,
        api_keys={KEY_A: "tenant-a", KEY_B: "tenant-b"},
        embed_max_wait_ms=50,
        metrics_port=0,
        max_document_bytes=20_000,
        llm_max_retries=0,
        chat_max_tokens=64,
    )
    store = EdgeStore(tmp / "index", settings.collection)
    store.ensure_collection()
    flow = RunningFlow(settings, store, embedder)
    services = build_services(settings, store=store, embedder=embedder)
    app = create_app(settings, services)
    with flow, ApiServer(app, free_port()) as server:
        s = Stack(settings, store, flow, server.url)
        for doc_id, (title, text) in DOCS.items():
            s.write(A, doc_id, title, text, url=f"https://kb.example/{doc_id}")
        s.write(B, "secret-b", "Tenant B volcano notes", "Mount Etna notes private to tenant B.")
        for doc_id in DOCS:
            s.wait_indexed(A, doc_id)
        s.wait_indexed(B, "secret-b")
        yield s
    services.close()
    store.close()


def test_written_document_becomes_searchable(stack: Stack) -> None:
    w = stack.write(
        A, "guide/setup.md", "Setup guide", "Install the flux capacitor before the warp coil."
    )
    assert w["op"] == "upsert" and w["partition"] in (0, 1) and w["offset"] >= 0
    assert w["consistency_token"] == f"{w['partition']}:{w['offset']}"
    status = stack.wait_indexed(A, "guide/setup.md")
    assert status["chunk_count"] == 1 and status["indexed_at"]
    r = stack.http.post(
        "/v1/search", headers=A, json={"query": "how do I install the flux capacitor?", "top_k": 3}
    )
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits[0]["doc_id"] == "guide/setup.md"
    assert {"text", "score", "title", "url", "version", "updated_at", "chunk_index"} <= set(hits[0])


def test_delete_through_api(stack: Stack) -> None:
    stack.write(A, "temp", "Temporary", "A short-lived note about zebras.")
    stack.wait_indexed(A, "temp")
    r = stack.http.delete("/v1/documents/temp", headers=A)
    assert r.status_code == 202 and r.json()["op"] == "delete"
    wait_for(
        lambda: stack.http.get("/v1/documents/temp", headers=A).status_code == 404,
        timeout=60,
        what="delete",
    )


def test_tenant_isolation(stack: Stack) -> None:
    r = stack.http.post(
        "/v1/search", headers=B, json={"query": "Mount Etna volcano lava", "top_k": 10}
    )
    assert {h["doc_id"] for h in r.json()["hits"]} == {"secret-b"}
    r = stack.http.post(
        "/v1/search", headers=A, json={"query": "Mount Etna volcano notes", "top_k": 10}
    )
    assert "secret-b" not in {h["doc_id"] for h in r.json()["hits"]}
    assert stack.http.get("/v1/documents/volcano", headers=B).status_code == 404
    assert stack.http.get("/v1/documents/secret-b", headers=A).status_code == 404
    r = stack.http.post("/v1/chat", headers=B, json={"question": "Which volcano erupts on Sicily?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {s["doc_id"] for s in body["sources"]} <= {"secret-b"}
    assert {c["doc_id"] for c in body["citations"]} <= {"secret-b"}
    # a filter in the body cannot widen the tenant
    r = stack.http.post(
        "/v1/search", headers=B, json={"query": "volcano", "filters": {"doc_ids": ["volcano"]}}
    )
    assert r.json()["hits"] == []


def test_auth_required(stack: Stack) -> None:
    assert stack.http.post("/v1/search", json={"query": "x"}).status_code == 401
    r = stack.http.post("/v1/search", headers={"Authorization": "Bearer nope"}, json={"query": "x"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
    assert stack.http.get("/v1/documents/volcano").status_code == 401
    assert stack.http.post("/v1/documents", json={"id": "x", "text": "y"}).status_code == 401


def test_input_bounds(stack: Stack) -> None:
    r = stack.http.post("/v1/search", headers=A, json={"query": "x", "top_k": 1000})
    assert r.status_code == 422 and r.json()["error"]["field"] == "top_k"
    r = stack.http.post("/v1/search", headers=A, json={"query": "q" * 5000})
    assert r.status_code == 422 and r.json()["error"]["field"] == "query"
    r = stack.http.post(
        "/v1/chat", headers=A, json={"messages": [{"role": "user", "content": "hi"}] * 40}
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "messages"
    r = stack.http.post("/v1/documents", headers=A, json={"id": "big", "text": "x" * 30_000})
    assert r.status_code == 413 and r.json()["error"]["field"] == "text"
    r = stack.http.post(
        "/v1/documents",
        headers={**A, "content-type": "application/json"},
        content=b'{"id": "huge", "text": "' + b"y" * 200_000 + b'"}',
    )
    assert r.status_code == 413 and r.json()["error"]["field"] == "body"
    r = stack.http.post(
        "/v1/search", headers=A, json={"query": "x", "filters": {"tenant": "tenant-b"}}
    )
    assert r.status_code == 422  # unknown filter fields are rejected, not ignored


def test_openai_client_non_streamed_and_streamed(stack: Stack) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{stack.url}/v1", api_key=KEY_A, timeout=120, max_retries=0)
    question = "How many days do customers have to return hardware for a refund?"
    completion = client.chat.completions.create(
        model="freshrag", messages=[{"role": "user", "content": question}]
    )
    assert completion.choices[0].message.content
    extra = completion.model_extra or {}
    sources = extra["sources"]
    assert sources and sources[0]["doc_id"] == "refunds"
    assert all(c["doc_id"] in DOCS for c in extra["citations"])
    assert extra["citations"], completion.choices[0].message.content

    stream = client.chat.completions.create(
        model="freshrag", messages=[{"role": "user", "content": question}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    final = chunks[-1].model_extra or {}
    assert final["citations"] and all(c["doc_id"] in DOCS for c in final["citations"])
    assert {c["number"] for c in final["citations"]} <= {s["number"] for s in final["sources"]}

    with pytest.raises(Exception) as info:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "freshrag" in str(info.value)


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        events.append((lines[0][7:], json.loads(lines[1][6:])))
    return events


def test_chat_stream_is_valid_sse_with_final_citations(stack: Stack) -> None:
    with stack.http.stream(
        "POST",
        "/v1/chat",
        headers=A,
        json={"question": "When do emperor penguins breed?", "stream": True},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    events = parse_sse(body)
    kinds = [k for k, _ in events]
    assert kinds[0] == "sources" and kinds[-1] == "done" and "token" in kinds
    sources = events[0][1]["sources"]
    assert sources[0]["doc_id"] == "penguin"
    done = events[-1][1]
    numbers = {s["number"] for s in done["sources"]}
    assert all(c["number"] in numbers for c in done["citations"])
    from freshrag.generate.citations import strip_markers

    streamed = "".join(d["text"] for k, d in events if k == "token").strip()
    if done["replaced"]:  # the stream failed the grounding guard: `answer` replaces it
        assert done["answer_type"] in ("generated", "extractive", "refusal") and done["grounded"]
        assert done["unsupported"] and strip_markers(streamed) != strip_markers(done["answer"])
    else:  # markers attributed after the stream (citations_inferred) are the only difference
        assert strip_markers(streamed) == strip_markers(done["answer"])


def test_chat_refuses_without_llm_when_nothing_relevant(stack: Stack) -> None:
    r = stack.http.post(
        "/v1/chat",
        headers=A,
        json={"question": "What is the airspeed of a swallow carrying a coconut?"},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["refused"] is True and body["citations"] == []


def test_health_ready_metrics_docs(stack: Stack) -> None:
    assert stack.http.get("/healthz").json() == {"status": "ok"}
    r = stack.http.get("/readyz")
    assert r.status_code == 200 and all(c["ok"] for c in r.json()["checks"].values())
    metrics = stack.http.get("/metrics").text
    assert 'freshrag_http_request_seconds_count{method="POST",route="/v1/search"' in metrics
    assert "freshrag_retrieval_seconds_count" in metrics
    assert stack.http.get("/docs").status_code == 200
    assert "/v1/chat/completions" in stack.http.get("/openapi.json").json()["paths"]


def metric_samples(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(http.get("/metrics").text)
        for s in family.samples
    }


def test_openai_route_records_the_same_llm_metrics_as_chat(stack: Stack) -> None:
    question = "How many days do customers have to return hardware for a refund?"
    body = {"model": "freshrag", "messages": [{"role": "user", "content": question}]}
    before = metric_samples(stack.http)
    r = stack.http.post("/v1/chat/completions", headers=A, json=body)
    assert r.status_code == 200, r.text
    kind = r.json()["answer_type"]
    with stack.http.stream(
        "POST", "/v1/chat/completions", headers=A, json={**body, "stream": True}
    ) as streamed:
        assert streamed.status_code == 200
        "".join(streamed.iter_text())
    after = metric_samples(stack.http)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("freshrag_llm_seconds_count", stream="false") == 1
    assert grew("freshrag_llm_seconds_count", stream="true") == 1
    assert grew("freshrag_llm_tokens_total", kind="prompt") > 0
    assert (
        sum(v - before.get(k, 0.0) for k, v in after.items() if k[0] == "freshrag_answers_total")
        == 2
    )
    assert grew("freshrag_answers_total", type=kind) >= 1


def test_llm_down_gives_503_with_sources_and_search_still_works(
    stack: Stack, embedder: Any, tmp_path: Path
) -> None:
    """A dedicated LLM server is started, then stopped, under a second app on the same index."""
    port = free_port()
    script = str(ROOT / "infra/llm/llm.sh")
    subprocess.run(
        [script, "start", "--port", str(port), "--dir", str(tmp_path)], check=True, cwd=ROOT
    )
    settings = stack.settings.model_copy(update={"openai_base_url": f"http://127.0.0.1:{port}/v1"})
    services = build_services(settings, store=stack.store, embedder=embedder)
    with ApiServer(create_app(settings, services), free_port()) as server:
        http = httpx.Client(base_url=server.url, timeout=60)
        ok = http.post("/v1/chat", headers=A, json={"question": "Which volcano is on Sicily?"})
        assert ok.status_code == 200
        subprocess.run([script, "stop", "--dir", str(tmp_path)], check=True, cwd=ROOT)
        for stream in (False, True):
            r = http.post(
                "/v1/chat",
                headers=A,
                json={"question": "Which volcano is on Sicily?", "stream": stream},
            )
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["error"]["upstream"].startswith(f"http://127.0.0.1:{port}")
            assert body["sources"][0]["doc_id"] == "volcano"
        r = http.post(
            "/v1/chat/completions",
            headers=A,
            json={
                "model": "freshrag",
                "messages": [{"role": "user", "content": "Sicily volcano?"}],
            },
        )
        assert r.status_code == 503 and r.json()["sources"]
        # both routes count their LLM failures: two /v1/chat calls and this one
        errors = metric_samples(http)[("freshrag_llm_errors_total", ())]
        assert errors == 3
        r = http.post("/v1/search", headers=A, json={"query": "Which volcano is on Sicily?"})
        assert r.status_code == 200 and r.json()["hits"][0]["doc_id"] == "volcano"
        assert http.get("/readyz").json()["checks"]["llm"]["ok"] is False
    services.close()


def test_ask_command_streams_answer_then_citations(stack: Stack) -> None:
    from typer.testing import CliRunner

    from freshrag.cli import app

    result = CliRunner().invoke(
        app,
        ["ask", "When do emperor penguins breed?", "--api-url", stack.url, "--api-key", KEY_A],
    )
    assert result.exit_code == 0, result.output
    answer, _, cited = result.output.partition("Sources")
    assert answer.strip()
    assert "[1] Penguins" in cited or "(no citations)" in result.output
    # the grounding guard's verdict is printed: the answer is never shown as plain truth
    assert "verified against its sources" in answer or "quoted from the sources" in answer
    bad = CliRunner().invoke(app, ["ask", "x", "--api-url", stack.url, "--api-key", "wrong"])
    assert bad.exit_code == 1 and "401" in bad.output


def test_serve_command_runs_the_app_factory(stack: Stack, tmp_path: Path) -> None:
    """`freshrag serve` as a process: settings from the environment, uvicorn, real services."""
    import os
    import sys

    port = free_port()
    env = {
        **os.environ,
        "FRESHRAG_KAFKA_BOOTSTRAP": stack.settings.kafka_bootstrap,
        "FRESHRAG_TOPIC": stack.settings.topic,
        "FRESHRAG_OPENAI_BASE_URL": stack.settings.openai_base_url,
        "FRESHRAG_INDEX_PATH": str(tmp_path / "serve-index"),
        "FRESHRAG_API_KEYS": f"{KEY_A}=tenant-a",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "freshrag.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert proc.poll() is None, "freshrag serve exited"
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=120, what="freshrag serve ready")
        r = httpx.post(
            f"{url}/v1/documents", headers=A, json={"id": "via-serve", "text": "Queued by serve."}
        )
        assert r.status_code == 202 and r.json()["topic"] == stack.settings.topic
        stack.wait_indexed(A, "via-serve")  # the running flow indexed what serve produced
        assert (
            httpx.get(f"{url}/v1/documents/x", headers={"Authorization": "Bearer bad"}).status_code
            == 401
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
