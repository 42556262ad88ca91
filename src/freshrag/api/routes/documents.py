"""Document writes become change events on Kafka (the flow indexes them); reads show the index."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response

from freshrag.api.auth import Caller
from freshrag.api.deps import CallerDep, ServicesDep
from freshrag.api.errors import api_error, invalid_input
from freshrag.api.idempotency import IdempotencyCache, IdempotencyConflict, IdempotencyInFlight
from freshrag.api.schemas import DocumentBody, DocumentStatusOut, WriteOut
from freshrag.api.services import Services
from freshrag.ingest.events import delete_event, encode_event, upsert_event
from freshrag.ingest.formats import (
    MARKDOWN,
    FormatError,
    normalize_content_type,
    to_indexable_text,
)
from freshrag.ingest.producer import Produced, ProduceError

router = APIRouter(prefix="/v1/documents", tags=["documents"])


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="a retry with the same key (same tenant, same request) returns the first "
        "result without producing a second event; kept 1 h in this API process",
    ),
]
_CACHE_LOCK = threading.Lock()


def _idempotency(request: Request) -> IdempotencyCache[Produced]:
    state = request.app.state
    with _CACHE_LOCK:
        cache: IdempotencyCache[Produced] | None = getattr(state, "idempotency", None)
        if cache is None:
            cache = state.idempotency = IdempotencyCache()
    return cache


def _write(
    request: Request,
    response: Response,
    services: Services,
    caller: Caller,
    key: str | None,
    event: dict[str, Any],
) -> Produced:
    """Produce the event, or with an Idempotency-Key return the result of its first use."""
    if key is None:
        return _send(services, event)
    fingerprint = hashlib.sha256(
        json.dumps(event, sort_keys=True, default=str).encode()
    ).hexdigest()
    wait_s = getattr(services.producer, "timeout_s", 10.0) + 2
    try:
        produced, replayed = _idempotency(request).run(
            caller.tenant, key, fingerprint, lambda: _send(services, event), wait_s
        )
    except IdempotencyConflict as exc:
        raise api_error(422, "idempotency_conflict", str(exc), field="Idempotency-Key") from None
    except IdempotencyInFlight as exc:
        raise api_error(409, "idempotency_in_flight", str(exc), field="Idempotency-Key") from None
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return produced


def _send(services: Services, event: dict[str, Any]) -> Produced:
    if services.producer is None:
        raise api_error(
            503,
            "upstream_unavailable",
            "document writes are disabled in this process",
            upstream="kafka",
        )
    try:
        produced: Produced = services.producer.send(event)
    except ProduceError as exc:
        raise api_error(503, "upstream_unavailable", exc.reason, upstream=exc.upstream) from None
    return produced


def _out(doc_id: str, op: str, p: Produced) -> WriteOut:
    return WriteOut(
        id=doc_id,
        op=op,  # type: ignore[arg-type]
        topic=p.topic,
        partition=p.partition,
        offset=p.offset,
        consistency_token=p.token,
    )


@router.post("", status_code=202, response_model=WriteOut)
def upsert_document(
    body: DocumentBody,
    caller: CallerDep,
    services: ServicesDep,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> WriteOut:
    """Queue an upsert; poll GET /v1/documents/{id} or pass the token to a search to wait.

    With an `Idempotency-Key` header a retry returns the first result (same partition,
    offset and token, header `Idempotent-Replayed: true`) and produces nothing."""
    limit = services.settings.max_document_bytes
    size = len(body.text.encode())
    if size > limit:
        raise api_error(
            413,
            "payload_too_large",
            f"text is {size} bytes, over the {limit}-byte document limit",
            field="text",
        )
    _check_convertible(body.text, body.content_type)
    event = upsert_event(
        body.id,
        body.text,
        tenant=caller.tenant,
        title=body.title,
        url=body.url,
        source=body.source,
        version=body.version,
        updated_at=body.updated_at,
        metadata=body.metadata,
        content_type=body.content_type,
        acl=body.acl.model_dump() if body.acl is not None else None,
    )
    # The flow dead-letters an event over the limit, and the event is more than its text.
    event_size = len(encode_event(event)[1])
    if event_size > limit:
        raise api_error(
            413,
            "payload_too_large",
            f"the document event is {event_size} bytes, over the {limit}-byte document limit",
            field="text",
        )
    produced = _write(request, response, services, caller, idempotency_key, event)
    return _out(body.id, "upsert", produced)


def _check_convertible(text: str, content_type: str | None) -> None:
    """422 for what the flow would dead-letter once it converts the text (`ingest.formats`):
    HTML nested too deep, or nothing left after dropping scripts, styles and navigation. The
    event itself carries the original text; the flow converts it again."""
    if content_type is None:
        return
    try:
        media = normalize_content_type(content_type)
        converted = to_indexable_text(text, media)
    except FormatError as exc:
        raise invalid_input("text", f"{exc.error_class}: {exc}") from None
    if media != MARKDOWN and not converted.strip():
        raise invalid_input(
            "text",
            f"text has no indexable text once converted from {media} (scripts, styles, "
            "navigation, forms and hidden elements are dropped)",
        )


@router.get("", response_model=list[dict[str, Any]])
def recent_documents(
    caller: CallerDep, services: ServicesDep, limit: int = Query(20, ge=1, le=200)
) -> list[dict[str, Any]]:
    """Recently indexed documents of the caller's tenant (live when the flow runs in-process)."""
    if services.recent is None:
        return []
    recent = services.recent.latest(caller.tenant, limit, principals=caller.principals)
    return [{k: v for k, v in asdict(a).items() if k != "acl"} for a in recent]


@router.delete("/{doc_id:path}", status_code=202, response_model=WriteOut)
def delete_document(
    doc_id: str,
    caller: CallerDep,
    services: ServicesDep,
    request: Request,
    response: Response,
    version: int | None = Query(None, ge=0, description="defaults to the Kafka record time"),
    idempotency_key: IdempotencyKey = None,
) -> WriteOut:
    event = delete_event(doc_id, tenant=caller.tenant, version=version)
    produced = _write(request, response, services, caller, idempotency_key, event)
    return _out(doc_id, "delete", produced)


@router.get("/{doc_id:path}", response_model=DocumentStatusOut)
def document_status(doc_id: str, caller: CallerDep, services: ServicesDep) -> DocumentStatusOut:
    status = services.current().store.document_status(
        caller.tenant, doc_id, principals=caller.principals
    )
    # another tenant's document, or one the caller may not read, looks like a missing one
    if status is None:
        raise api_error(404, "not_found", f"document '{doc_id}' is not indexed")
    return DocumentStatusOut(
        id=doc_id,
        version=status.version,
        chunk_count=status.chunk_count,
        indexed_at=status.indexed_at,
        updated_at=status.updated_at,
    )
