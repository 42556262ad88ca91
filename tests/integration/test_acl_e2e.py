"""Document permissions end to end (issue 16), on real Kafka, the real ingest flow and embedder,
Qdrant Edge and the real LLM server: a revoked principal gets no hit, no source and no citation
of the document once the consistency token of the revoking write has passed, and a chat never
sends the LLM (nor quotes) a chunk its caller may not read."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest

from freshrag.api.app import create_app
from freshrag.api.services import Services, build_services
from freshrag.core.principals import PRINCIPALS_HEADER
from freshrag.core.settings import load_settings
from freshrag.retrieve.edge_store import EdgeStore
from tests.conftest import free_port
from tests.integration.harness import ApiServer, RunningFlow, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.llm]

KEYS = {
    "acl-key-alice-0123456789": "acme|user:alice",
    "acl-key-eng-0123456789": "acme|group:eng",
    "acl-key-exec-0123456789": "acme|group:exec",
    "acl-key-plain-0123456789": "acme",
    "acl-key-gateway-0123456789": "acme",
}
ALICE, ENG, EXEC, PLAIN, GATEWAY = ({"Authorization": f"Bearer {k}"} for k in KEYS)
AS_ALICE_VIA_GATEWAY = {**GATEWAY, PRINCIPALS_HEADER: "user:alice"}

HANDBOOK = (
    "Zephyr rotation handbook",
    "The zephyr protocol rotates the signing keys every 90 minutes at the Oslo site.",
)
HANDBOOK_PHRASE = "rotates the signing keys every 90 minutes"
SECRET = (
    "Launch plan (executives)",
    "The secret launch code word is BLUEFALCON and the launch date is March 3.",
)
PUBLIC = (
    "Launch overview",
    "The product launch is planned for spring; the launch code word is shared with executives.",
)


class RecordingLLM:
    """Wraps the real LLM client: every prompt sent is kept, the answer is the real one."""

    def __init__(self, services: Services) -> None:
        self.prompts: list[str] = []
        llm = services.llm
        complete, stream = llm.complete, llm.stream

        def record(messages: Sequence[Any]) -> None:
            self.prompts.append(json.dumps(list(messages), default=str))

        def recording_complete(messages: Sequence[Any], max_tokens: int) -> Any:
            record(messages)
            return complete(messages, max_tokens)

        def recording_stream(messages: Sequence[Any], max_tokens: int) -> Any:
            record(messages)
            return stream(messages, max_tokens)

        llm.complete = recording_complete  # type: ignore[method-assign]
        llm.stream = recording_stream  # type: ignore[method-assign]


class AclStack:
    def __init__(self, url: str, llm: RecordingLLM) -> None:
        self.http = httpx.Client(base_url=url, timeout=120)
        self.llm = llm

    def write(self, doc_id: str, doc: tuple[str, str], acl: Any) -> str:
        body: dict[str, Any] = {"id": doc_id, "title": doc[0], "text": doc[1]}
        if acl is not None:
            body["acl"] = acl
        r = self.http.post("/v1/documents", headers=PLAIN, json=body)
        assert r.status_code == 202, r.text
        return str(r.json()["consistency_token"])

    def search(
        self, key: dict[str, str], query: str, token: str | None = None, **extra: Any
    ) -> list[dict[str, Any]]:
        body = {"query": query, "top_k": 10, "consistency_token": token, **extra}
        r = self.http.post("/v1/search", headers=key, json=body)
        assert r.status_code == 200, r.text
        hits: list[dict[str, Any]] = r.json()["hits"]
        return hits

    def chat(self, key: dict[str, str], question: str, token: str | None = None) -> dict[str, Any]:
        body = {"question": question, "top_k": 5, "consistency_token": token}
        r = self.http.post("/v1/chat", headers=key, json=body)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, llm_base_url: str, embedder: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AclStack]:
    from confluent_kafka.admin import AdminClient, NewTopic

    tmp = tmp_path_factory.mktemp("acl")
    topic = f"acl-{uuid.uuid4().hex[:10]}"  # unique on a reused broker
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 2)])[topic].result(30)
    settings = load_settings(
        kafka_bootstrap=kafka_bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        openai_base_url=llm_base_url,
        api_keys=KEYS,
        trust_principals_header=True,
        embed_max_wait_ms=50,
        metrics_port=0,
        llm_max_retries=0,
        chat_max_tokens=64,
        chat_min_score=0.0,  # always ask the LLM: what it is sent is under test
    )
    store = EdgeStore(tmp / "index", settings.collection)
    store.ensure_collection()
    flow = RunningFlow(settings, store, embedder)
    # the in-process flow's watermarks, as `freshrag up` wires them: tokens wait on these
    services = build_services(
        settings, store=store, embedder=embedder, watermarks=flow.parts.watermarks.snapshot
    )
    llm = RecordingLLM(services)
    with flow, ApiServer(create_app(settings, services), free_port()) as server:
        yield AclStack(server.url, llm)
    services.close()
    store.close()


def doc_ids(items: Sequence[dict[str, Any]]) -> set[str]:
    return {str(i["doc_id"]) for i in items}


def test_a_revoked_principal_gets_no_hit_and_no_citation_once_its_token_passes(
    stack: AclStack,
) -> None:
    query = "How often does the zephyr protocol rotate the signing keys?"
    granted = stack.write("handbook", HANDBOOK, {"users": ["alice"], "groups": ["eng"]})
    for key in (ALICE, ENG, AS_ALICE_VIA_GATEWAY):
        assert "handbook" in doc_ids(stack.search(key, query, granted))
    assert "handbook" not in doc_ids(stack.search(PLAIN, query, granted))
    assert "handbook" not in doc_ids(stack.search(GATEWAY, query, granted))  # no header
    before = stack.chat(ALICE, query, granted)
    assert "handbook" in doc_ids(before["sources"])  # the chat did use it while allowed

    revoked = stack.write("handbook", HANDBOOK, {"groups": ["eng"]})  # alice removed
    for key in (ALICE, AS_ALICE_VIA_GATEWAY):
        for mode in ("hybrid", "dense", "bm25"):
            hits = stack.search(key, query, revoked, mode=mode)
            assert "handbook" not in doc_ids(hits), mode
        grouped = stack.search(key, query, revoked, group=True, dedupe=True)
        assert "handbook" not in doc_ids(grouped)
        assert stack.http.get("/v1/documents/handbook", headers=key).status_code == 404
    sent_before = len(stack.llm.prompts)
    answer = stack.chat(ALICE, query, revoked)
    assert "handbook" not in doc_ids(answer["sources"])
    assert "handbook" not in doc_ids(answer["citations"])
    assert not any(HANDBOOK_PHRASE in p for p in stack.llm.prompts[sent_before:])
    r = stack.http.post(
        "/v1/chat/completions",
        headers=ALICE,
        json={"model": "freshrag", "messages": [{"role": "user", "content": query}]},
    )
    assert r.status_code == 200, r.text
    assert "handbook" not in doc_ids(r.json()["sources"])
    assert "handbook" not in doc_ids(r.json()["citations"])
    assert not any(HANDBOOK_PHRASE in p for p in stack.llm.prompts[sent_before:])
    # the group that kept it still reads it
    assert "handbook" in doc_ids(stack.search(ENG, query, revoked))
    assert stack.http.get("/v1/documents/handbook", headers=ENG).status_code == 200


def test_a_chat_never_quotes_a_chunk_its_caller_may_not_read(stack: AclStack) -> None:
    stack.write("public-plan", PUBLIC, None)
    token = stack.write("exec-plan", SECRET, {"groups": ["exec"]})
    question = "What is the secret launch code word?"
    assert "exec-plan" in doc_ids(stack.search(EXEC, question, token))  # it is the best match
    for key in (PLAIN, ENG, ALICE):
        sent_before = len(stack.llm.prompts)
        answer = stack.chat(key, question, token)
        assert "exec-plan" not in doc_ids(answer["sources"])
        assert "exec-plan" not in doc_ids(answer["citations"])
        assert "BLUEFALCON" not in answer["answer"]
        assert len(stack.llm.prompts) > sent_before  # the LLM was asked ...
        assert not any("BLUEFALCON" in p for p in stack.llm.prompts[sent_before:])  # ... blind
    with stack.http.stream(
        "POST", "/v1/chat", headers=PLAIN, json={"question": question, "stream": True}
    ) as r:
        assert r.status_code == 200
        body = "".join(r.iter_text())
    assert "BLUEFALCON" not in body and "exec-plan" not in body


def test_an_acl_naming_no_one_hides_the_document_from_every_key(stack: AclStack) -> None:
    token = stack.write("sealed", ("Sealed memo", "The quartz vault opens at dawn."), {})
    for key in (PLAIN, ALICE, ENG, EXEC):
        assert "sealed" not in doc_ids(stack.search(key, "when does the quartz vault open", token))
        assert stack.http.get("/v1/documents/sealed", headers=key).status_code == 404
    opened = stack.write("sealed", ("Sealed memo", "The quartz vault opens at dawn."), None)
    assert "sealed" in doc_ids(stack.search(PLAIN, "when does the quartz vault open", opened))
    wait_for(
        lambda: stack.http.get("/v1/documents/sealed", headers=PLAIN).status_code == 200,
        timeout=30,
        what="sealed readable",
    )
