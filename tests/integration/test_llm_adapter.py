"""The LLM adapter: against the real local LLM server, a closed port, and scripted upstreams.

The scripted-upstream cases run the real openai client over an httpx MockTransport, because a
real server cannot be made to answer 503 or 400 on demand; they check the retry policy.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openai import OpenAI

from freshrag.core.settings import Settings
from freshrag.generate.answer import AnswerDelta, AnswerDone, Answerer
from freshrag.generate.citations import strip_markers
from freshrag.generate.llm import LLMClient, LLMError, LLMUnavailable, redact_url
from freshrag.generate.prompt import ChatMessage, PromptSettings
from freshrag.generate.sources import Source
from tests.conftest import free_port

pytestmark = pytest.mark.integration

# The HTTP library the installed openai client is built on (openai>=3 uses httpx2).
http: Any = importlib.import_module("httpx2" if importlib.util.find_spec("httpx2") else "httpx")

SECRET = "sk-test-secret-never-logged"
MESSAGES: list[ChatMessage] = [{"role": "user", "content": "Say hello in one short sentence."}]

SOURCES = [
    Source(
        doc_id="kb-refunds",
        title="Refund policy",
        url="https://kb.example/refunds",
        version=7,
        updated_at="2026-11-28T12:00:00+00:00",
        chunk_index=0,
        text="Customers can get a full refund within 30 days of purchase.",
        score=0.9,
    ),
    Source(
        doc_id="kb-shipping",
        title="Shipping",
        url="https://kb.example/shipping",
        version=3,
        updated_at="2026-10-01T08:00:00+00:00",
        chunk_index=0,
        text="Standard shipping takes 5 business days and is free over 50 euros.",
        score=0.7,
    ),
]


# -- the real local LLM server ------------------------------------------------------------


@pytest.fixture(scope="module")
def llm(llm_base_url: str) -> Iterator[LLMClient]:
    client = LLMClient(llm_base_url, "sk-local", "smollm2", timeout_s=60, max_retries=1)
    yield client
    client.close()


@pytest.mark.llm
def test_complete_and_stream_return_text(llm: LLMClient) -> None:
    completion = llm.complete(MESSAGES, max_tokens=24)
    assert completion.text.strip()
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.finish_reason in ("stop", "length")

    deltas = list(llm.stream(MESSAGES, max_tokens=24))
    assert len(deltas) > 1 and all(deltas)
    assert "".join(deltas).strip() == completion.text.strip()  # temperature 0 + seed


@pytest.mark.llm
def test_ping_lists_the_served_model(llm: LLMClient) -> None:
    assert "smollm2" in llm.ping()
    assert llm.ready()


@pytest.mark.llm
def test_answerer_over_real_sources_cites_only_given_sources(llm: LLMClient) -> None:
    answerer = Answerer(llm, PromptSettings(answer_tokens=64))
    answer = answerer.answer("How long do customers have to ask for a refund?", SOURCES)
    assert not answer.refused
    assert answer.text.strip()
    assert [ns.number for ns in answer.sources_used] == [1, 2]
    given = {s.doc_id for s in SOURCES}
    for citation in answer.citations:
        assert 1 <= citation.number <= len(answer.sources_used)
        assert citation.doc_id == answer.sources_used[citation.number - 1].source.doc_id
        assert citation.doc_id in given
    assert len({c.number for c in answer.citations}) == len(answer.citations)

    events = list(answerer.stream_answer("How long does shipping take?", SOURCES))
    done = events[-1]
    assert isinstance(done, AnswerDone)
    streamed = "".join(e.text for e in events if isinstance(e, AnswerDelta))
    if done.answer.citations_inferred:  # markers attributed after the stream are added last
        assert strip_markers(streamed).strip() == strip_markers(done.answer.text).strip()
    else:
        assert streamed.strip() == done.answer.text
    assert all(1 <= c.number <= 2 for c in done.answer.citations)


@pytest.mark.llm
def test_refusal_needs_no_server() -> None:
    dead = LLMClient(f"http://127.0.0.1:{free_port()}/v1", SECRET, "smollm2", max_retries=0)
    answer = Answerer(dead, min_score=0.95).answer("Refunds?", SOURCES)
    assert answer.refused and answer.citations == ()


# -- a closed port ------------------------------------------------------------------------


def test_closed_port_raises_llm_unavailable_quickly_naming_upstream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    client = LLMClient(base_url, SECRET, "smollm2", timeout_s=2, max_retries=2, backoff_s=0.01)
    caplog.set_level(logging.DEBUG)

    started = time.monotonic()
    with pytest.raises(LLMUnavailable) as info:
        client.complete(MESSAGES, max_tokens=8)
    assert time.monotonic() - started < 5
    assert info.value.upstream == base_url
    assert base_url in str(info.value)
    assert "unavailable" in str(info.value)
    assert "after 3 attempts" in str(info.value)

    with pytest.raises(LLMUnavailable, match=re.escape(base_url)):
        next(iter(client.stream(MESSAGES, max_tokens=8)))
    events = Answerer(client).stream_answer("Refunds?", SOURCES)
    with pytest.raises(LLMUnavailable):
        next(events)  # before any event: the API can still send a 503
    with pytest.raises(LLMUnavailable):
        client.ping()
    assert client.ready() is False
    assert "retrying" in caplog.text  # retries are logged...
    assert SECRET not in caplog.text  # ...without the key
    assert SECRET not in repr(client) and SECRET not in str(info.value)


def test_from_settings_and_redacted_upstream() -> None:
    settings = Settings.model_validate(
        {
            "openai_base_url": "http://user:pw@127.0.0.1:9/v1",
            "openai_api_key": SECRET,
            "llm_timeout_s": 1.5,
            "llm_max_retries": 4,
        }
    )
    client = LLMClient.from_settings(settings)
    assert client.upstream == "http://127.0.0.1:9/v1"
    assert client.max_retries == 4
    assert client.model == settings.openai_model
    assert redact_url("http://h:1/v1") == "http://h:1/v1"


# -- scripted upstreams (real openai client, fake transport) ------------------------------


def _chat(text: str) -> dict[str, object]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def _sse(pieces: list[str]) -> bytes:
    lines = []
    for piece in pieces:
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        lines.append(f"data: {json.dumps(chunk)}\n\n")
    lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def broken_body(first: bytes) -> Iterator[bytes]:
    """An SSE body that dies after its first event, as a reset connection does."""
    yield first
    raise http.ReadError("connection reset")


Handler = Callable[[Any], Any]


def scripted(responses: list[Handler]) -> tuple[LLMClient, list[dict[str, object]]]:
    """An LLMClient whose n-th HTTP request is answered by responses[n]."""
    seen: list[dict[str, object]] = []

    def handle(request: Any) -> Any:
        seen.append(json.loads(request.content or b"{}"))
        return responses[min(len(seen), len(responses)) - 1](request)

    base = "http://llm.test/v1"
    transport = http.Client(transport=http.MockTransport(handle))
    sdk = OpenAI(base_url=base, api_key=SECRET, max_retries=0, http_client=transport)
    return LLMClient(base, SECRET, "m", max_retries=2, backoff_s=0.001, client=sdk), seen


def status(code: int) -> Handler:
    return lambda _r: http.Response(code, json={"error": {"message": f"status {code}"}})


def ok(text: str) -> Handler:
    return lambda _r: http.Response(200, json=_chat(text))


def sse(pieces: list[str]) -> Handler:
    return lambda _r: http.Response(
        200, content=_sse(pieces), headers={"content-type": "text/event-stream"}
    )


def test_transient_5xx_and_429_are_retried_then_succeed() -> None:
    client, seen = scripted([status(503), status(429), ok("fine")])
    completion = client.complete(MESSAGES, max_tokens=16)
    assert completion.text == "fine"
    assert completion.usage is not None and completion.usage.total_tokens == 5
    assert len(seen) == 3
    body = seen[-1]
    assert (body["temperature"], body["seed"], body["max_tokens"]) == (0.0, 42, 16)
    assert body["model"] == "m" and body.get("stream") in (None, False)


def test_persistent_5xx_gives_llm_unavailable_after_all_attempts() -> None:
    client, seen = scripted([status(500)])
    with pytest.raises(LLMUnavailable) as info:
        client.complete(MESSAGES, max_tokens=16)
    assert len(seen) == 3
    assert info.value.status_code == 500
    assert "http://llm.test/v1" in str(info.value)


@pytest.mark.parametrize("code", [400, 401, 404, 422])
def test_4xx_is_not_retried(code: int) -> None:
    client, seen = scripted([status(code), ok("never")])
    with pytest.raises(LLMError) as info:
        client.complete(MESSAGES, max_tokens=16)
    assert not isinstance(info.value, LLMUnavailable)
    assert info.value.status_code == code
    assert len(seen) == 1


def test_stream_retries_before_the_first_token() -> None:
    client, seen = scripted([status(502), sse(["Hel", "lo", "!"])])
    deltas = client.stream(MESSAGES, max_tokens=16)
    assert len(seen) == 2  # connected eagerly, before iteration
    assert list(deltas) == ["Hel", "lo", "!"]
    assert seen[-1]["stream"] is True
    assert list(deltas) == []


def test_stream_close_stops_early_and_empty_stream_ends() -> None:
    client, _ = scripted([sse(["a", "b", "c"])])
    deltas = client.stream(MESSAGES, max_tokens=16)
    assert next(deltas) == "a"
    deltas.close()
    assert list(deltas) == []
    client, _ = scripted([sse([])])
    assert list(client.stream(MESSAGES, max_tokens=16)) == []


def test_stream_is_not_retried_after_the_first_token() -> None:
    first = _sse(["Hel"]).split(b"data: [DONE]")[0]

    def broken(_r: Any) -> Any:
        return http.Response(
            200, content=broken_body(first), headers={"content-type": "text/event-stream"}
        )

    client, seen = scripted([broken, sse(["never"])])
    got: list[str] = []
    with pytest.raises(LLMUnavailable, match="after the first token"):
        for delta in client.stream(MESSAGES, max_tokens=16):
            got.append(delta)
    assert got == ["Hel"]
    assert len(seen) == 1
