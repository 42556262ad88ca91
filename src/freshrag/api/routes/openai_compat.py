"""POST /v1/chat/completions: freshrag as an OpenAI-compatible model named `freshrag`.

Retrieval uses the last user message; citations and sources ride in extra top-level fields,
which OpenAI clients keep (`completion.model_extra["citations"]`), so any chat UI can use it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from freshrag.api.chat_support import (
    citation_out,
    first_event,
    grounding_out,
    record_answer,
    source_out,
    split_messages,
    stream_error,
    upstream_error,
)
from freshrag.api.deps import CallerDep, ServicesDep
from freshrag.api.errors import api_error
from freshrag.api.limits import LimitsDep
from freshrag.api.retrieval import retrieve_sources
from freshrag.api.schemas import Filters, OpenAIChatBody
from freshrag.generate.answer import AnswerDelta, AnswerDone, AnswerStart
from freshrag.generate.llm import LLMError

router = APIRouter(prefix="/v1", tags=["openai"])
MODEL = "freshrag"


@router.get("/models")
def models(caller: CallerDep) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "freshrag"}]}


@router.post(
    "/chat/completions",
    responses={429: {"description": "too many chats in flight; OpenAI error shape, Retry-After"}},
)
async def chat_completions(
    body: OpenAIChatBody, caller: CallerDep, services: ServicesDep, limits: LimitsDep
) -> Any:
    """Async like /v1/chat: the LLM call runs in the LLM executor, never in the threadpool."""
    if body.model != MODEL and not body.model.startswith(MODEL + ":"):
        raise api_error(
            404,
            "invalid_request_error",
            f"model '{body.model}' does not exist; use '{MODEL}'",
            field="model",
            code="model_not_found",
        )
    question, history = split_messages(body.messages, services)
    slot = limits.chat_slot(caller.tenant, openai=True)  # 429 in OpenAI's error shape
    try:
        retrieved = await run_in_threadpool(
            retrieve_sources,
            services,
            caller,
            question,
            Filters(),
            services.settings.chat_top_k,
            False,
        )
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        started = time.perf_counter()

        if not body.stream:
            try:
                answer = await slot.call(
                    services.answerer.answer, question, retrieved.sources, history
                )
            except LLMError as exc:
                return upstream_error(exc, retrieved, services)
            finally:
                slot.release()
            record_answer(services, answer, time.perf_counter() - started, streamed=False)
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer.text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": answer.prompt_tokens,
                    "completion_tokens": 0,
                    "total_tokens": answer.prompt_tokens,
                },
                "citations": [citation_out(c).model_dump() for c in answer.citations],
                "sources": [source_out(ns).model_dump() for ns in answer.sources_used],
                "refused": answer.refused,
                "citations_inferred": answer.citations_inferred,
                # the watermark read when retrieval ran: which writes the answer could see
                "index": retrieved.index(services).model_dump(mode="json"),
                **grounding_out(answer).model_dump(),
            }

        try:
            first, events = await slot.call(first_event, services, question, retrieved, history)
        except LLMError as exc:
            slot.release()
            return upstream_error(exc, retrieved, services)
    except BaseException:
        slot.release()
        raise

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body_ = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(body_, default=str)}\n\n"

    async def stream() -> AsyncIterator[str]:
        event: Any = first
        shown = ""
        try:
            while event is not None:
                if isinstance(event, AnswerStart):
                    yield chunk({"role": "assistant", "content": ""})
                elif isinstance(event, AnswerDelta):
                    shown += event.text
                    yield chunk({"content": event.text})
                elif isinstance(event, AnswerDone):
                    answer = event.answer
                    elapsed = time.perf_counter() - started
                    record_answer(services, answer, elapsed, streamed=True)
                    if event.replaced:  # an OpenAI client only reads `content`: correct it there
                        yield chunk({"content": replacement(shown, answer.text)})
                    yield chunk(
                        {},
                        "stop",
                        citations=[citation_out(c).model_dump() for c in answer.citations],
                        sources=[source_out(ns).model_dump() for ns in answer.sources_used],
                        refused=answer.refused,
                        citations_inferred=answer.citations_inferred,
                        # the streamed content failed the grounding guard: show this instead
                        answer=answer.text if event.replaced else None,
                        replaced=event.replaced,
                        index=retrieved.index(services).model_dump(mode="json"),
                        **grounding_out(answer).model_dump(),
                    )
                event = await slot.call(next, events, None)  # LLM reads off the pool
        except LLMError as exc:
            yield f"data: {json.dumps({'error': stream_error(exc, services)})}\n\n"
        finally:
            slot.release(events.close)
        yield "data: [DONE]\n\n"

    body_iterator = stream()
    slot.release_with(body_iterator, events.close)
    return StreamingResponse(
        body_iterator, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


CORRECTION = "\n\n(The text above is not supported by its sources. From the sources:) "


def replacement(shown: str, final: str) -> str:
    """The content that ends a stream whose text failed the grounding guard: the answer itself
    when nothing was shown yet, else a correction after what was."""
    return final if not shown.strip() else CORRECTION + final
