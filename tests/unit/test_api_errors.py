"""Error answers of the app for the cases of issue 10, with the services replaced by small fakes
(the same routes run on the real components in tests/integration/test_api_fuzz.py)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from freshrag.api.app import create_app
from freshrag.api.chat_support import llm_error_status
from freshrag.api.services import ApiMetrics
from freshrag.core.settings import load_settings
from freshrag.generate.answer import Answerer
from freshrag.generate.llm import LLMError, LLMUnavailable
from freshrag.generate.prompt import PromptSettings

KEY = "k-acme-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


class FakeLLM:
    upstream = "http://llm.internal:8081/v1"

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.pings = 0

    def ready(self) -> bool:
        self.pings += 1
        return self.up


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.counted: list[str | None] = []

    def count(self, tenant: str | None = None) -> int:
        self.counted.append(tenant)
        if self.fail:
            raise RuntimeError("qdrant at http://qdrant.internal:6333 refused the connection")
        return 0


class FakeProducer:
    bootstrap = "kafka.internal:9092"

    def ready(self) -> bool:
        return True


def make_client(
    *, llm_up: bool = True, store_fails: bool = False, context_window: int = 2048, **overrides: Any
) -> tuple[TestClient, Any]:
    settings = load_settings(**{"api_keys": {KEY: "acme"}, "max_document_bytes": 1000, **overrides})
    llm = FakeLLM(llm_up)
    services: Any = SimpleNamespace(
        settings=settings,
        store=FakeStore(store_fails),
        metrics=ApiMetrics(),
        producer=FakeProducer(),
        llm=llm,
        answerer=Answerer(llm, PromptSettings(context_window=context_window, answer_tokens=200)),
        watermarks=None,
        flow_alive=None,
    )
    services.current = lambda: SimpleNamespace(
        name="t", store=services.store, searcher=getattr(services, "searcher", None)
    )
    return TestClient(create_app(settings, services)), services


@pytest.fixture
def http() -> Iterator[TestClient]:
    client, _ = make_client()
    with client:
        yield client


def test_chat_message_over_the_query_limit_is_422_naming_the_field(http: TestClient) -> None:
    message = {"role": "user", "content": "x" * 4_001}
    r = http.post("/v1/chat", headers=AUTH, json={"messages": [message]})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "messages.0.content"
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "?"}, message]
    r = http.post("/v1/chat", headers=AUTH, json={"messages": turns})
    assert r.status_code == 422 and r.json()["error"]["field"] == "messages.2.content"
    r = http.post("/v1/chat", headers=AUTH, json={"question": "   "})
    assert r.status_code == 422 and r.json()["error"]["field"] == "question"


def test_openai_route_answers_422_in_openai_shape(http: TestClient) -> None:
    body = {"model": "freshrag", "messages": [{"role": "user", "content": "x" * 4_001}]}
    r = http.post("/v1/chat/completions", headers=AUTH, json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages.0.content" and "4001 characters" in error["message"]
    assert "code" in error
    r = http.post("/v1/chat/completions", headers=AUTH, json={"model": "freshrag"})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "messages" and r.json()["error"]["type"] == (
        "invalid_request_error"
    )
    r = http.post("/v1/chat/completions", json=body)  # no key: OpenAI's authentication_error
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
    # freshrag's own routes keep their shape
    r = http.post("/v1/chat", headers=AUTH, json={})
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid"


def test_openai_client_raises_its_own_error_type(http: TestClient) -> None:
    import openai

    client = openai.OpenAI(
        base_url="http://testserver/v1", api_key=KEY, http_client=http, max_retries=0
    )
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(
            model="freshrag", messages=[{"role": "user", "content": "x" * 4_001}]
        )
    assert info.value.param == "messages.0.content"  # type: ignore[attr-defined]


# the rule the flow applies to stored keys (letters incl. non-ASCII, digits, _ -, 1-128), so
# every stored key can be filtered on and nothing else reaches a filter path
@pytest.mark.parametrize("key", ['a["b', "", "a.b", "a b", "x" * 129, "ключ.x", "a/b"])
def test_bad_metadata_filter_keys_are_422(http: TestClient, key: str) -> None:
    for field in ("metadata", "metadata_any"):
        value: Any = "v" if field == "metadata" else ["v"]
        r = http.post(
            "/v1/search", headers=AUTH, json={"query": "x", "filters": {field: {key: value}}}
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"].startswith(f"filters.{field}")


@pytest.mark.parametrize(
    "filters",
    [
        {"metadata_any": {"lang": ["en", 1]}},  # one kind per list
        {"metadata_any": {"lang": []}},
        {"metadata": {"n": 2**64}},  # beyond 64 bits
        {"doc_ids": [""]},
    ],
)
def test_filter_values_the_index_cannot_take_are_422(http: TestClient, filters: Any) -> None:
    r = http.post("/v1/search", headers=AUTH, json={"query": "x", "filters": filters})
    assert r.status_code == 422, r.text
    r = http.post("/v1/search", headers=AUTH, json={"query": " \t "})
    assert r.status_code == 422 and r.json()["error"]["field"] == "query"


def test_oversized_chunked_body_is_413(http: TestClient) -> None:
    limit = 1000 + 64 * 1024

    def chunks() -> Iterator[bytes]:
        yield b'{"id": "big", "text": "'
        for _ in range(limit // 8192 + 2):
            yield b"y" * 8192
        yield b'"}'

    r = http.post(
        "/v1/documents", headers={**AUTH, "content-type": "application/json"}, content=chunks()
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"] == {
        "type": "payload_too_large",
        "field": "body",
        "message": f"request body is over the {limit}-byte limit",
    }


def test_body_that_is_not_utf8_is_422(http: TestClient) -> None:
    r = http.post(
        "/v1/search", headers={**AUTH, "content-type": "application/json"}, content=b'"\xff\xfe"'
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"


def test_question_that_cannot_fit_the_context_window_is_422() -> None:
    client, _ = make_client(context_window=256)  # 56 prompt tokens: the system prompt alone
    with client:
        r = client.post("/v1/chat", headers=AUTH, json={"question": "What is Etna?"})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["field"] == "question" and "context window" in error["message"]
        r = client.post(
            "/v1/chat/completions",
            headers=AUTH,
            json={"model": "freshrag", "messages": [{"role": "user", "content": "Etna?"}]},
        )
        assert r.status_code == 422 and r.json()["error"]["param"] == "messages.0.content"


def test_llm_errors_map_to_503_when_unavailable_and_502_otherwise() -> None:
    assert llm_error_status(LLMUnavailable("u", "timed out"))[0] == 503
    assert llm_error_status(LLMError("u", "HTTP 400: bad request", 400))[0] == 502
    assert llm_error_status(LLMError("u", "HTTP 401", 401))[1] == "upstream_error"


def test_readyz_llm_down_is_degraded_not_unready_and_cached() -> None:
    client, services = make_client(llm_up=False)
    with client:
        r = client.get("/readyz")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ready"] is True and body["status"] == "degraded"
        assert body["checks"]["llm"] == {"ok": False, "status": "degraded"}
        client.get("/readyz")
        assert services.llm.pings == 1  # probes within the TTL do not ask the LLM again
        # the store is probed with a filtered count of a tenant no key can have, never a
        # full count of the collection
        assert services.store.counted and None not in services.store.counted


def test_readyz_reveals_upstreams_only_to_callers_with_a_key() -> None:
    client, _ = make_client(store_fails=True)
    with client:
        anonymous = client.get("/readyz")
        assert anonymous.status_code == 503
        for hidden in ("internal", "6333", "9092", "8081"):
            assert hidden not in anonymous.text
        wrong = client.get("/readyz", headers={"Authorization": "Bearer nope"})
        assert "internal" not in wrong.text
        keyed = client.get("/readyz", headers=AUTH).json()
        assert keyed["checks"]["kafka"]["upstream"] == "kafka.internal:9092"
        assert keyed["checks"]["llm"]["upstream"] == "http://llm.internal:8081/v1"
        assert "qdrant.internal" in keyed["checks"]["store"]["error"]


def test_healthz_is_trivial() -> None:
    client, services = make_client(store_fails=True, llm_up=False)
    with client:
        assert client.get("/healthz").json() == {"status": "ok"}
    assert services.store.counted == [] and services.llm.pings == 0
