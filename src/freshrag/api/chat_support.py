"""What `/v1/chat` and the OpenAI-compatible `/v1/chat/completions` share, so the routes stay thin:
reading the question, the response parts (sources, citations, grounding), the one mapping of LLM
failures to HTTP, the upstream error bodies and the LLM metrics both routes record.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fastapi.responses import JSONResponse

from freshrag.api.errors import invalid_input
from freshrag.api.retrieval import Retrieved
from freshrag.api.schemas import (
    CitationOut,
    GroundingOut,
    Message,
    SourceOut,
    UnsupportedOut,
    source_position,
)
from freshrag.api.services import Services
from freshrag.generate.answer import Answer, AnswerEvent, OnUngrounded
from freshrag.generate.citations import Citation
from freshrag.generate.llm import LLMError, LLMUnavailable
from freshrag.generate.prompt import PromptTooLarge
from freshrag.generate.sources import NumberedSource, Source
from freshrag.retrieve.search import MAX_QUERY_CHARS

# -- the question ------------------------------------------------------------------------------


def split_messages(messages: list[Message], services: Services) -> tuple[str, list[dict[str, str]]]:
    """The last user message is the question; earlier turns are history."""
    if len(messages) > services.settings.max_messages:
        raise invalid_input("messages", "too many messages")
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user" and (messages[i].content or "").strip():
            history = [
                {"role": m.role, "content": m.content or ""}
                for m in messages[:i]
                if m.role in ("user", "assistant") and m.content
            ]
            question = messages[i].content or ""
            check_question(question, f"messages.{i}.content", services)
            return question, history
    raise invalid_input("messages", "no user message with content")


def check_question(question: str, field: str, services: Services) -> None:
    """422 naming the field for a question that retrieval or the prompt cannot take."""
    limit = min(services.settings.max_query_chars, MAX_QUERY_CHARS)
    problem = ""
    if not question.strip():
        problem = f"{field} is blank"
    elif len(question) > limit:
        problem = f"{field} is {len(question)} characters, over the {limit}-character limit"
    else:
        try:
            services.answerer.ensure_fits(question)
        except PromptTooLarge as exc:
            problem = f"{field} does not fit the LLM context window: {exc}"
    if problem:
        raise invalid_input(field, problem)


# -- response parts ----------------------------------------------------------------------------


def source_out(ns: NumberedSource) -> SourceOut:
    s = ns.source
    return SourceOut(
        number=ns.number,
        doc_id=s.doc_id,
        title=s.title,
        url=s.url,
        version=s.version,
        updated_at=s.updated_at_iso,
        chunk_index=s.chunk_index,
        score=s.score,
        text=s.text,
        indexed_at=s.indexed_at_iso,
        source_position=source_position(s.topic, s.partition, s.offset),
    )


def retrieved_sources(sources: list[Source]) -> list[SourceOut]:
    return [source_out(NumberedSource(i + 1, s)) for i, s in enumerate(sources)]


def citation_out(c: Citation) -> CitationOut:
    return CitationOut(
        number=c.number,
        doc_id=c.doc_id,
        title=c.title,
        url=c.url,
        version=c.version,
        updated_at=c.updated_at,
        chunk_index=c.chunk_index,
        text=c.text,
        indexed_at=c.indexed_at,
        source_position=source_position(c.topic, c.partition, c.offset),
    )


def grounding_out(answer: Answer) -> GroundingOut:
    return GroundingOut(
        grounded=answer.grounded,
        answer_type=answer.answer_type,
        unsupported=[
            UnsupportedOut(sentence=u.sentence, missing=list(u.missing)) for u in answer.unsupported
        ],
        retried=answer.retried,
        warning=answer.warning,
    )


# -- the LLM call: start, failures, metrics ------------------------------------------------------


def first_event(
    services: Services,
    question: str,
    retrieved: Retrieved,
    history: list[dict[str, str]],
    on_ungrounded: OnUngrounded = "extractive",
) -> tuple[AnswerEvent, Generator[AnswerEvent, None, None]]:
    """Start the answer stream; LLM connection errors surface here, before any byte is sent."""
    events = services.answerer.stream_answer(question, retrieved.sources, history, on_ungrounded)
    return next(events), events


def llm_error_status(exc: LLMError) -> tuple[int, str, str]:
    """The one mapping of LLM failures to HTTP: (status, error type, code).

    503 when the upstream is unavailable (unreachable, timed out, 429 or 5xx after retries: the
    same request may succeed later); 502 when it rejected or broke the request (4xx, a bad
    response: retrying it unchanged will not help)."""
    if isinstance(exc, LLMUnavailable):
        return 503, "upstream_unavailable", "llm_unavailable"
    return 502, "upstream_error", "llm_error"


def upstream_error(exc: LLMError, retrieved: Retrieved, services: Services) -> JSONResponse:
    """503 or 502 (see llm_error_status) naming the upstream, with the sources that were
    retrieved (never a bare 500). `param` makes it OpenAI's error shape too. Counted."""
    services.metrics.llm_errors.inc()
    status, kind, code = llm_error_status(exc)
    verb = "is unavailable" if status == 503 else "failed"
    error = {
        "type": kind,
        "code": code,
        "param": None,
        "upstream": exc.upstream,
        "message": f"the LLM at {exc.upstream} {verb}: {exc.reason}",
    }
    body: dict[str, Any] = {
        "error": error,
        "sources": [s.model_dump() for s in retrieved_sources(retrieved.sources)],
    }
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def stream_error(exc: LLMError, services: Services) -> dict[str, Any]:
    """The error a stream ends with when the LLM fails after the first byte was sent. Counted."""
    services.metrics.llm_errors.inc()
    return {"type": llm_error_status(exc)[1], "upstream": exc.upstream, "message": exc.reason}


def record_answer(services: Services, answer: Answer, seconds: float, *, streamed: bool) -> None:
    """The answer metrics both chat routes record: how it was made, LLM time, prompt tokens
    (a refused non-streamed answer made no LLM call, so it adds no time or tokens)."""
    services.metrics.answers.labels(answer.answer_type).inc()
    if streamed:
        services.metrics.llm.labels("true").observe(seconds)
    elif not answer.refused:
        services.metrics.llm.labels("false").observe(seconds)
        services.metrics.tokens.labels("prompt").inc(answer.prompt_tokens)
