"""POST /v1/chat: a grounded, cited answer; `stream: true` sends Server-Sent Events."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Generator
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from freshrag.api.consistency import wait_for_token
from freshrag.api.deps import CallerDep, ServicesDep
from freshrag.api.limits import LimitsDep
from freshrag.api.retrieval import Retrieved, index_info, retrieve_sources
from freshrag.api.schemas import (
    ChatBody,
    ChatOut,
    CitationOut,
    GroundingOut,
    Message,
    SourceOut,
    UnsupportedOut,
)
from freshrag.api.services import Services
from freshrag.generate.answer import (
    Answer,
    AnswerDelta,
    AnswerDone,
    AnswerEvent,
    AnswerStart,
    OnUngrounded,
)
from freshrag.generate.citations import Citation
from freshrag.generate.llm import LLMError, LLMUnavailable
from freshrag.generate.prompt import PromptTooLarge
from freshrag.generate.sources import NumberedSource, Source
from freshrag.retrieve.search import MAX_QUERY_CHARS

router = APIRouter(prefix="/v1", tags=["chat"])


def split_messages(messages: list[Message], services: Services) -> tuple[str, list[dict[str, str]]]:
    """The last user message is the question; earlier turns are history."""
    if len(messages) > services.settings.max_messages:
        raise HTTPException(
            422, {"type": "invalid", "field": "messages", "message": "too many messages"}
        )
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
    raise HTTPException(
        422, {"type": "invalid", "field": "messages", "message": "no user message with content"}
    )


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
        raise HTTPException(422, {"type": "invalid", "field": field, "message": problem})


def question_of(body: ChatBody, services: Services) -> tuple[str, list[dict[str, str]]]:
    if body.messages:
        return split_messages(body.messages, services)
    if body.question:
        check_question(body.question, "question", services)
        return body.question, []
    raise HTTPException(
        422,
        {"type": "invalid", "field": "question", "message": "give 'question' or 'messages'"},
    )


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
    )


def retrieved_sources(sources: list[Source]) -> list[SourceOut]:
    return [source_out(NumberedSource(i + 1, s)) for i, s in enumerate(sources)]


def citation_out(c: Citation) -> CitationOut:
    return CitationOut(**{f: getattr(c, f) for f in CitationOut.model_fields})


def llm_error_status(exc: LLMError) -> tuple[int, str, str]:
    """The one mapping of LLM failures to HTTP: (status, error type, code).

    503 when the upstream is unavailable (unreachable, timed out, 429 or 5xx after retries: the
    same request may succeed later); 502 when it rejected or broke the request (4xx, a bad
    response: retrying it unchanged will not help)."""
    if isinstance(exc, LLMUnavailable):
        return 503, "upstream_unavailable", "llm_unavailable"
    return 502, "upstream_error", "llm_error"


def upstream_error(exc: LLMError, retrieved: Retrieved) -> JSONResponse:
    """503 or 502 (see llm_error_status) naming the upstream, with the sources that were
    retrieved (never a bare 500). `param` makes it OpenAI's error shape too."""
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


def answer_out(answer: Answer, retrieved: Retrieved, services: Services) -> ChatOut:
    used = answer.sources_used
    services.metrics.answers.labels(answer.answer_type).inc()
    return ChatOut(
        answer=answer.text,
        citations=[citation_out(c) for c in answer.citations],
        sources=[source_out(ns) for ns in used],
        refused=answer.refused,
        citations_inferred=answer.citations_inferred,
        index=index_info(services, [h.updated_at for h in retrieved.hits]),
        **grounding_out(answer).model_dump(),
    )


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


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


@router.post(
    "/chat",
    response_model=ChatOut,
    responses={
        429: {"description": "too many chats in flight (per tenant or in total); Retry-After"},
        503: {"description": "LLM unavailable"},
    },
)
async def chat(body: ChatBody, caller: CallerDep, services: ServicesDep, limits: LimitsDep) -> Any:
    """Async: the token wait and the LLM call hold no threadpool thread (see api.limits)."""
    question, history = question_of(body, services)
    await wait_for_token(services, limits, body.consistency_token)
    slot = limits.chat_slot(caller.tenant)  # 429 past the tenant's or the total limit
    try:
        retrieved = await run_in_threadpool(
            retrieve_sources, services, caller, question, body.filters, body.top_k, body.fresh
        )
        started = time.perf_counter()
        if not body.stream:
            try:
                answer = await slot.call(
                    services.answerer.answer,
                    question,
                    retrieved.sources,
                    history,
                    body.on_ungrounded,
                )
            except LLMError as exc:
                services.metrics.llm_errors.inc()
                return upstream_error(exc, retrieved)
            finally:
                slot.release()
            if not answer.refused:
                services.metrics.llm.labels("false").observe(time.perf_counter() - started)
                services.metrics.tokens.labels("prompt").inc(answer.prompt_tokens)
            return answer_out(answer, retrieved, services)

        try:
            first, events = await slot.call(
                first_event, services, question, retrieved, history, body.on_ungrounded
            )
        except LLMError as exc:
            services.metrics.llm_errors.inc()
            slot.release()
            return upstream_error(exc, retrieved)
    except BaseException:
        slot.release()
        raise

    async def stream() -> AsyncIterator[str]:
        event: AnswerEvent | None = first
        try:
            while event is not None:
                if isinstance(event, AnswerStart):
                    used = [source_out(ns).model_dump() for ns in event.sources_used]
                    yield sse("sources", {"sources": used, "refused": event.refused})
                elif isinstance(event, AnswerDelta):
                    yield sse("token", {"text": event.text})
                elif isinstance(event, AnswerDone):
                    out = answer_out(event.answer, retrieved, services)
                    services.metrics.llm.labels("true").observe(time.perf_counter() - started)
                    # replaced: the streamed tokens failed the grounding guard; show `answer`
                    yield sse("done", {**out.model_dump(mode="json"), "replaced": event.replaced})
                event = await slot.call(next, events, None)  # LLM reads off the pool
        except LLMError as exc:
            services.metrics.llm_errors.inc()
            yield sse(
                "error",
                {"type": llm_error_status(exc)[1], "upstream": exc.upstream, "message": exc.reason},
            )
        finally:
            slot.release(events.close)  # after the running read: closes the upstream stream

    body_iterator = stream()
    slot.release_with(body_iterator, events.close)  # dropped before it ever ran
    return StreamingResponse(
        body_iterator,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
