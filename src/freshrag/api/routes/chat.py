"""POST /v1/chat: a grounded, cited answer; `stream: true` sends Server-Sent Events."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from freshrag.api.chat_support import (
    check_question,
    citation_out,
    first_event,
    grounding_out,
    record_answer,
    source_out,
    split_messages,
    stream_error,
    upstream_error,
)
from freshrag.api.consistency import wait_for_token
from freshrag.api.deps import CallerDep, ServicesDep
from freshrag.api.errors import invalid_input
from freshrag.api.limits import LimitsDep
from freshrag.api.retrieval import Retrieved, retrieve_sources
from freshrag.api.schemas import ChatBody, ChatOut
from freshrag.api.services import Services
from freshrag.generate.answer import Answer, AnswerDelta, AnswerDone, AnswerEvent, AnswerStart
from freshrag.generate.llm import LLMError

router = APIRouter(prefix="/v1", tags=["chat"])


def question_of(body: ChatBody, services: Services) -> tuple[str, list[dict[str, str]]]:
    if body.messages:
        return split_messages(body.messages, services)
    if body.question:
        check_question(body.question, "question", services)
        return body.question, []
    raise invalid_input("question", "give 'question' or 'messages'")


def answer_out(answer: Answer, retrieved: Retrieved, services: Services) -> ChatOut:
    return ChatOut(
        answer=answer.text,
        citations=[citation_out(c) for c in answer.citations],
        sources=[source_out(ns) for ns in answer.sources_used],
        refused=answer.refused,
        citations_inferred=answer.citations_inferred,
        index=retrieved.index(services),  # the watermark read when retrieval ran
        **grounding_out(answer).model_dump(),
    )


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


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
                return upstream_error(exc, retrieved, services)
            finally:
                slot.release()
            record_answer(services, answer, time.perf_counter() - started, streamed=False)
            return answer_out(answer, retrieved, services)

        try:
            first, events = await slot.call(
                first_event, services, question, retrieved, history, body.on_ungrounded
            )
        except LLMError as exc:
            slot.release()
            return upstream_error(exc, retrieved, services)
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
                    elapsed = time.perf_counter() - started
                    record_answer(services, event.answer, elapsed, streamed=True)
                    # replaced: the streamed tokens failed the grounding guard; show `answer`
                    yield sse("done", {**out.model_dump(mode="json"), "replaced": event.replaced})
                event = await slot.call(next, events, None)  # LLM reads off the pool
        except LLMError as exc:
            yield sse("error", stream_error(exc, services))
        finally:
            slot.release(events.close)  # after the running read: closes the upstream stream

    body_iterator = stream()
    slot.release_with(body_iterator, events.close)  # dropped before it ever ran
    return StreamingResponse(
        body_iterator,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
