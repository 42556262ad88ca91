"""Parse Kafka change events into Upsert/Delete, or a DeadLetter value (pure, never raises),
and write the native event: `upsert_event`/`delete_event` build it, `encode_event` makes the
record's key and value, `native_event` turns a parsed event back into one (`parse_record` of it
gives the same event back). Every producer (the API, `freshrag load`) writes events through these.

Formats read: the native JSON event, Debezium envelopes (with or without the schema/payload
wrapper), and tombstones (null value = delete by key). See DESIGN.md "Change events".

A native event with `"replay": true` is a repair (`freshrag verify --repair`; an upsert also
names the offset it replays, `replay_of`): the version gate applies it at an equal version too,
but never over a write that came after (see `ordering`). Repair writes it under the document's
*replay key* and then a tombstone of that key, so compaction drops both and the document's own
key keeps its latest real event; that tombstone parses to `Ignored`, never to a delete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from freshrag.core.principals import acl_to_event
from freshrag.core.tenants import DEFAULT_TENANT, is_valid_tenant
from freshrag.ingest.formats import MARKDOWN, FormatError, normalize_content_type, to_indexable_text
from freshrag.ingest.validation import (
    MAX_METADATA_KEYS,
    InvalidValue,
    check_acl,
    check_metadata,
    check_version,
    json_kind,
    loads_strict,
)

MAX_ID_LENGTH = 512
MAX_TITLE_LENGTH = 2_000

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RecordOrigin:
    """Where a record came from, carried to the DLQ headers and the freshness metric."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class RawRecord:
    key: bytes | None
    value: bytes | None
    origin: RecordOrigin


@dataclass(frozen=True, slots=True)
class Upsert:
    tenant: str
    doc_id: str
    version: int
    title: str
    text: str
    updated_at: datetime
    origin: RecordOrigin
    url: str | None = None
    source: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # The original record, so a later step can still dead-letter the exact bytes.
    raw: RawRecord | None = field(default=None, compare=False, repr=False)
    # A database row (Debezium): its id names it across tenants, so a tenant change is a move.
    row_identity: bool = False
    # False: `version` is the record timestamp, and equal versions are told apart by offset.
    explicit_version: bool = True
    # Who may read it: sorted "user:<id>" / "group:<id>" (`core.principals`); ("nobody",) for
    # an `acl` naming no one; None (no `acl`): the whole tenant.
    acl: tuple[str, ...] | None = None
    # A repair's replay of the source's winning event, the record at offset `replay_of` of the
    # same partition: the gate applies it at an equal version while that record is the last
    # one it applied to the document (`ordering.is_after`).
    replay: bool = False
    replay_of: int = -1

    @property
    def doc_key(self) -> str:
        return f"{self.tenant}/{self.doc_id}"


@dataclass(frozen=True, slots=True)
class Delete:
    """`version=None`: delete whatever is indexed (see `ordering`). `tenant_known=False`: the
    source did not say the tenant (bare-key tombstone, key-only `before` image); the flow
    resolves it to the tenant(s) the document was indexed under."""

    tenant: str
    doc_id: str
    version: int | None
    origin: RecordOrigin
    tenant_known: bool = True
    row_identity: bool = False
    # A repair's delete of points the source deleted: applied only while the document is
    # deleted (or unknown) to the gate, and only up to `version`, so it never removes a newer write.
    replay: bool = False

    @property
    def doc_key(self) -> str:
        return f"{self.tenant}/{self.doc_id}"


ChangeEvent = Upsert | Delete


@dataclass(frozen=True, slots=True)
class Ignored:
    """A record that names no change: the tombstone that clears a repair's replay key. The flow
    only marks its offset done."""

    origin: RecordOrigin
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be processed: the original bytes plus why and where."""

    key: bytes | None
    value: bytes | None
    origin: RecordOrigin
    error_class: str
    message: str
    step: str

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("freshrag.error.class", self.error_class.encode()),
            ("freshrag.error.message", self.message[:2000].encode()),
            ("freshrag.error.step", self.step.encode()),
            ("freshrag.source.topic", self.origin.topic.encode()),
            ("freshrag.source.partition", str(self.origin.partition).encode()),
            ("freshrag.source.offset", str(self.origin.offset).encode()),
        ]


@dataclass(frozen=True, slots=True)
class DebeziumMapping:
    """Which row columns of a Debezium `after`/`before` image become which document fields."""

    id_field: str = "id"
    text_field: str = "text"
    title_field: str | None = "title"
    url_field: str | None = "url"
    updated_at_field: str | None = "updated_at"
    tenant_field: str | None = "tenant"
    version_field: str | None = None
    content_type_field: str | None = "content_type"  # text/markdown, text/html, text/plain
    # {"users": [...], "groups": [...]} as an object or JSON text (a json/jsonb column)
    acl_field: str | None = "acl"
    metadata_fields: Sequence[str] | None = None  # None: every other column
    source: str = "debezium"


@dataclass(frozen=True, slots=True)
class EventLimits:
    max_document_bytes: int = 1_000_000


class EventError(ValueError):
    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


# -- writing the native event -------------------------------------------------------------------


def upsert_event(
    doc_id: Any,
    text: Any,
    *,
    tenant: Any = None,
    title: Any = None,
    url: Any = None,
    source: Any = None,
    version: Any = None,
    updated_at: Any = None,
    metadata: Any = None,
    content_type: Any = None,
    acl: Any = None,
) -> dict[str, Any]:
    """The native upsert event. A field left None is left out (the reader's default applies:
    default tenant, the record timestamp as version and updated_at). Values are not checked
    here: the flow's `parse_record` is the one validator, and dead-letters what it refuses."""
    event: dict[str, Any] = {"op": "upsert", "id": doc_id, "text": text}
    fields = {
        "tenant": tenant,
        "title": title,
        "url": url,
        "source": source,
        "version": version,
        "updated_at": updated_at.isoformat() if isinstance(updated_at, datetime) else updated_at,
        "metadata": metadata,
        "content_type": content_type,
        "acl": acl,  # {"users": [...], "groups": [...]}; None: the whole tenant
    }
    event.update({k: v for k, v in fields.items() if v is not None})
    return event


def delete_event(doc_id: Any, *, tenant: Any = None, version: Any = None) -> dict[str, Any]:
    """The native delete event; without a version it deletes whatever is indexed."""
    event: dict[str, Any] = {"op": "delete", "id": doc_id}
    if tenant is not None:
        event["tenant"] = tenant
    if version is not None:
        event["version"] = version
    return event


def native_event(event: ChangeEvent) -> dict[str, Any]:
    """A parsed event as the native event that parses back to it (the record's origin aside;
    an upsert's version is written out, so it reads back as explicit)."""
    if isinstance(event, Delete):
        deleted = delete_event(event.doc_id, tenant=event.tenant, version=event.version)
        return {**deleted, "replay": True} if event.replay else deleted
    native = upsert_event(
        event.doc_id,
        event.text,
        tenant=event.tenant,
        title=event.title,
        url=event.url,
        source=event.source,
        version=event.version,
        updated_at=event.updated_at,
        metadata=dict(event.metadata),
        acl=acl_to_event(event.acl),
    )
    return {**native, "replay": True, "replay_of": event.replay_of} if event.replay else native


def encode_event(event: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) of the Kafka record for a native event: the key is `document_key` of the
    event's tenant (the default tenant when it names none) and id, so the compacted topic keeps
    the latest event of every tenant's document (`replay_key` for a repair's replay); the value
    is UTF-8 JSON."""
    value = json.dumps(event, ensure_ascii=False, default=str).encode()
    if event.get("replay") is True:
        return replay_key(event.get("tenant"), event["id"]), value
    return document_key(event.get("tenant"), event["id"]), value


# -- record keys -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentKey:
    """The document a record key names. `tenant_known=False`: the key does not say the tenant
    (a legacy bare-id key, a Debezium key without the tenant column); `tenant` is then the
    default tenant, and a tombstone with it reaches the tenant(s) the document was indexed under."""

    tenant: str
    doc_id: str
    tenant_known: bool = True
    replay: bool = False  # a repair's replay key (`replay_key`)


def document_key(tenant: Any, doc_id: Any) -> bytes:
    """The record key of a document: compact JSON `{"id":"<doc id>","tenant":"<tenant>"}`,
    keys sorted, UTF-8, non-ASCII unescaped. Canonical, so the broker's compaction (which
    compares key bytes) sees one key per (tenant, document); JSON, so no doc id (which may hold
    '/', '{' or anything) can be read as another tenant's. Values are not checked here (see
    `upsert_event`); a tenant left None is the default tenant."""
    key = {
        "id": doc_id if isinstance(doc_id, str) else str(doc_id),
        "tenant": DEFAULT_TENANT if tenant is None else str(tenant),
    }
    return json.dumps(key, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode(
        "utf-8", "surrogatepass"
    )


def replay_key(tenant: Any, doc_id: Any) -> bytes:
    """The key of a repair's replay of a document: `document_key` plus `"replay":true`. A key of
    its own, so the replay and the tombstone that follows it never displace the document's own
    latest event in the compacted topic; same id, so the same partition and the same gate."""
    key = {
        "id": doc_id if isinstance(doc_id, str) else str(doc_id),
        "replay": True,
        "tenant": DEFAULT_TENANT if tenant is None else str(tenant),
    }
    return json.dumps(key, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode(
        "utf-8", "surrogatepass"
    )


def parse_key(key: bytes | None, mapping: DebeziumMapping | None = None) -> DocumentKey:
    """The document a record key names, or an EventError. Read in this order:

    - a JSON object (a `{"schema":..,"payload":{..}}` wrapper is unwrapped): the id is the
      mapping's id column, else `id` (an integer id becomes its decimal string); the tenant is
      the mapping's tenant column, else `tenant` when the key is exactly freshrag's own
      `{"id":..,"tenant":..}` or a replay key (`replay_key`); without either the tenant is not
      known;
    - anything else is a legacy bare document id (default tenant, tenant not known)."""
    m = mapping or DebeziumMapping()
    if not key:
        raise EventError("MissingKey", "the record has no key to name a document")
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError("InvalidEncoding", f"key is not UTF-8: {exc.reason}") from None
    if not key_text.startswith("{"):
        return DocumentKey(DEFAULT_TENANT, _doc_id(key_text, "key", allow_int=False), False)
    try:
        body = _loads(key_text)
    except json.JSONDecodeError as exc:
        raise EventError("InvalidJSON", f"record key is not JSON: {exc.msg}") from None
    if isinstance(body, dict) and isinstance(body.get("payload"), dict):
        body = body["payload"]
    if not isinstance(body, dict):
        raise EventError("WrongType", "record key must be a JSON object or a plain id")
    doc_id = _doc_id(body.get(m.id_field, body.get("id")), "key.id", allow_int=True)
    if (
        set(body) == {"id", "replay", "tenant"}
        and body["replay"] is True
        and isinstance(body["tenant"], str)
    ):
        return DocumentKey(_tenant(body["tenant"]), doc_id, replay=True)  # a repair's replay
    if m.tenant_field and body.get(m.tenant_field) is not None:
        return DocumentKey(_tenant(body[m.tenant_field]), doc_id)
    if set(body) == {"id", "tenant"} and isinstance(body["tenant"], str):
        return DocumentKey(_tenant(body["tenant"]), doc_id)  # freshrag's own key
    return DocumentKey(DEFAULT_TENANT, doc_id, False)


# -- reading ---------------------------------------------------------------------------------------


STEP = "parse"


def parse_record(
    record: RawRecord,
    limits: EventLimits | None = None,
    mapping: DebeziumMapping | None = None,
) -> ChangeEvent | DeadLetter | Ignored:
    """Turn one Kafka record into a change event, or a DeadLetter naming what is wrong (or
    `Ignored`: the tombstone of a repair's replay key)."""
    try:
        return _parse(record, limits or EventLimits(), mapping or DebeziumMapping())
    except EventError as exc:
        return _dead(record, exc.error_class, str(exc))
    except Exception as exc:  # a bug must not stop the flow; the record goes to the DLQ
        return _dead(record, type(exc).__name__, f"unexpected error: {exc}")


def _dead(record: RawRecord, error_class: str, message: str) -> DeadLetter:
    return DeadLetter(record.key, record.value, record.origin, error_class, message, STEP)


def _parse(
    record: RawRecord, limits: EventLimits, mapping: DebeziumMapping
) -> ChangeEvent | Ignored:
    if record.value is None:
        return _tombstone(record, mapping)
    if len(record.value) > limits.max_document_bytes:
        raise EventError(
            "DocumentTooLarge",
            f"event is {len(record.value)} bytes, over the {limits.max_document_bytes}-byte limit",
        )
    try:
        text = record.value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(
            "InvalidEncoding", f"value is not UTF-8: {exc.reason} at byte {exc.start}"
        ) from None
    try:
        body = _loads(text)
    except json.JSONDecodeError as exc:
        raise EventError("InvalidJSON", f"value is not JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(body, dict):
        raise EventError("WrongType", f"event must be a JSON object, got {json_kind(body)}")
    envelope = _debezium_envelope(body)
    if envelope is not None:
        return _from_debezium(envelope, record, mapping)
    return _from_native(body, record)


def _from_native(body: dict[str, Any], record: RawRecord) -> ChangeEvent:
    op = body.get("op")
    if op is None:
        raise EventError("MissingField", "field 'op' is required ('upsert' or 'delete')")
    if op not in ("upsert", "delete"):
        raise EventError("UnknownOp", f"field 'op' must be 'upsert' or 'delete', got {op!r}")
    doc_id = _doc_id(body.get("id"), "id", allow_int=False)
    tenant = _tenant(body.get("tenant"))
    replay = _replay(body.get("replay"))
    if op == "delete":
        raw_version = body.get("version")
        version = None if raw_version is None else _version(raw_version, record)
        if replay and version is None:
            raise EventError("MissingField", "a replayed delete needs the version it deletes up to")
        return Delete(tenant, doc_id, version, record.origin, replay=replay)
    version = _version(body.get("version"), record)
    replay_of = _replay_of(body.get("replay_of"), replay)
    content_type = _content_type(body.get("content_type"))
    return Upsert(
        explicit_version=body.get("version") is not None,
        tenant=tenant,
        doc_id=doc_id,
        version=version,
        title=_optional_str(body.get("title"), "title", MAX_TITLE_LENGTH) or "",
        text=_indexable(_text(body.get("text"), "text"), content_type, "text"),
        updated_at=_updated_at(body.get("updated_at"), record),
        origin=record.origin,
        url=_optional_str(body.get("url"), "url", 4096),
        source=_optional_str(body.get("source"), "source", 256),
        metadata=_with_content_type(_metadata(body.get("metadata")), content_type),
        raw=record,
        acl=_acl(body.get("acl"), "acl"),
        replay=replay,
        replay_of=replay_of,
    )


def _replay(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    raise EventError("WrongType", f"field 'replay' must be a boolean, got {json_kind(value)}")


def _replay_of(value: Any, replay: bool) -> int:
    """The offset of the record a replayed upsert replays (-1: not a replay)."""
    if not replay:
        if value is not None:
            raise EventError("WrongType", "field 'replay_of' is only for a replay ('replay': true)")
        return -1
    if value is None:
        raise EventError("MissingField", "a replayed upsert needs 'replay_of' (an offset)")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise EventError("WrongType", "field 'replay_of' must be an offset (an integer >= 0)")
    return value


def _debezium_envelope(body: dict[str, Any]) -> dict[str, Any] | None:
    """The Debezium change payload, unwrapping the JSON-converter schema/payload wrapper."""
    if "payload" in body and isinstance(body.get("payload"), dict) and "schema" in body:
        body = body["payload"]
    if body.get("op") in ("c", "r", "u", "d") and ("after" in body or "before" in body):
        return body
    return None


def _from_debezium(env: dict[str, Any], record: RawRecord, m: DebeziumMapping) -> ChangeEvent:
    op = env["op"]
    row = env.get("before") if op == "d" else env.get("after")
    image = "before" if op == "d" else "after"
    if not isinstance(row, dict):
        raise EventError("MissingField", f"Debezium op '{op}' needs a row in '{image}'")
    doc_id = _doc_id(row.get(m.id_field), f"{image}.{m.id_field}", allow_int=True)
    tenant = _tenant(row.get(m.tenant_field) if m.tenant_field else None)
    raw_version = row.get(m.version_field) if m.version_field else None
    if op == "d":
        # A key-only `before` image (REPLICA IDENTITY DEFAULT) names no tenant and no version.
        tenant_known = not m.tenant_field or row.get(m.tenant_field) is not None
        version = None if raw_version is None else _version(raw_version, record)
        return Delete(
            tenant, doc_id, version, record.origin, tenant_known=tenant_known, row_identity=True
        )
    version = _version(raw_version, record)
    explicit_version = raw_version is not None
    used = {m.id_field, m.text_field, m.title_field, m.url_field, m.updated_at_field}
    used |= {m.tenant_field, m.version_field, m.content_type_field, m.acl_field}
    content_type = _content_type(row.get(m.content_type_field) if m.content_type_field else None)
    if m.metadata_fields is None:
        # every other column, as far as it is storable: a long text column or an odd column
        # name must not send the whole row to the DLQ (named metadata_fields stay strict)
        meta_src = _storable_columns(
            {k: v for k, v in row.items() if k not in used and v is not None}
        )
    else:
        meta_src = {k: row[k] for k in m.metadata_fields if row.get(k) is not None}
    return Upsert(
        tenant=tenant,
        doc_id=doc_id,
        version=version,
        title=_optional_str(row.get(m.title_field) if m.title_field else None, "title", 2000) or "",
        text=_indexable(
            _text(row.get(m.text_field), f"{image}.{m.text_field}"),
            content_type,
            f"{image}.{m.text_field}",
        ),
        updated_at=_updated_at(row.get(m.updated_at_field) if m.updated_at_field else None, record),
        origin=record.origin,
        url=_optional_str(row.get(m.url_field) if m.url_field else None, "url", 4096),
        source=m.source,
        metadata=_with_content_type(
            _metadata({k: v for k, v in meta_src.items() if _scalar(v)}), content_type
        ),
        raw=record,
        row_identity=True,
        explicit_version=explicit_version,
        acl=_acl(row.get(m.acl_field) if m.acl_field else None, f"{image}.{m.acl_field}"),
    )


def _tombstone(record: RawRecord, m: DebeziumMapping) -> Delete | Ignored:
    """A null value deletes the document its key names (`parse_key`): freshrag's own key,
    a Debezium key such as {"id": 42}, or a legacy bare id. The tombstone of a replay key only
    clears a repair's replay from the compacted topic: it deletes nothing."""
    if not record.key:
        raise EventError(
            "MissingKey", "tombstone (null value) without a key cannot name a document"
        )
    key = parse_key(record.key, m)
    if key.replay:
        return Ignored(record.origin, "the tombstone of a repair's replay key")
    return Delete(
        key.tenant,
        key.doc_id,
        None,
        record.origin,
        tenant_known=key.tenant_known,
        row_identity=True,
    )


def _doc_id(value: Any, name: str, *, allow_int: bool) -> str:
    if value is None:
        raise EventError("MissingField", f"field '{name}' (document id) is required")
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise EventError("WrongType", f"field '{name}' must be a string, got {json_kind(value)}")
    if not value.strip():
        raise EventError("MissingField", f"field '{name}' (document id) is empty")
    if len(value) > MAX_ID_LENGTH:
        raise EventError("WrongType", f"field '{name}' is longer than {MAX_ID_LENGTH} characters")
    return value


def _tenant(value: Any) -> str:
    if value is None:
        return DEFAULT_TENANT
    if not isinstance(value, str):
        raise EventError("WrongType", f"field 'tenant' must be a string, got {json_kind(value)}")
    if not is_valid_tenant(value):
        raise EventError("InvalidTenant", "field 'tenant' must match [A-Za-z0-9_.-]{1,64}")
    return value


def _version(value: Any, record: RawRecord) -> int:
    if value is None:  # the record timestamp; a producer's absurd CreateTime is refused too
        return _checked(
            lambda ts: check_version(ts, "the record timestamp"), record.origin.timestamp_ms
        )
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError("WrongType", f"field 'version' must be an integer, got {json_kind(value)}")
    if value < 0:
        raise EventError("WrongType", "field 'version' must be >= 0")
    return _checked(check_version, value)


def _text(value: Any, name: str) -> str:
    if value is None:
        raise EventError("MissingField", f"field '{name}' is required for an upsert")
    if not isinstance(value, str):
        raise EventError("WrongType", f"field '{name}' must be a string, got {json_kind(value)}")
    if not value.strip():
        raise EventError(
            "EmptyText", f"field '{name}' is empty; send a delete to remove a document"
        )
    return value


def _content_type(value: Any) -> str | None:
    """The declared media type (`formats.normalize_content_type`), None when not declared."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventError(
            "WrongType", f"field 'content_type' must be a string, got {json_kind(value)}"
        )
    try:
        return normalize_content_type(value)
    except FormatError as exc:
        raise EventError(exc.error_class, str(exc)) from None


def _acl(value: Any, name: str) -> tuple[str, ...] | None:
    """Who may read the document (`core.principals.parse_acl`); a Debezium json/jsonb column
    arrives as JSON text. Absent or null: the whole tenant."""
    if isinstance(value, str):
        try:
            value = _loads(value)
        except json.JSONDecodeError as exc:
            raise EventError(
                "InvalidAcl", f"field '{name}' is text but not JSON: {exc.msg}"
            ) from None
    return _checked(check_acl, value)


def _indexable(text: str, content_type: str | None, name: str) -> str:
    """The text to chunk and store: HTML made markdown-like, plain text escaped (`formats`)."""
    if content_type is None or content_type == MARKDOWN:
        return text
    try:
        out = to_indexable_text(text, content_type)
    except FormatError as exc:
        raise EventError(exc.error_class, f"field '{name}' ({content_type}): {exc}") from None
    if not out.strip():
        raise EventError(
            "EmptyText",
            f"field '{name}' has no text left once converted from {content_type} (scripts, "
            "styles, navigation, forms and hidden elements are dropped)",
        )
    return out


def _with_content_type(metadata: dict[str, Any], content_type: str | None) -> dict[str, Any]:
    """The declared content type is kept as metadata `content_type` (filterable, shown with
    each hit), unless the event's own metadata has that key or no room is left."""
    if content_type is None or "content_type" in metadata:
        return metadata
    try:
        return check_metadata({**metadata, "content_type": content_type})
    except InvalidValue:
        return metadata


def _optional_str(value: Any, name: str, max_len: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventError("WrongType", f"field '{name}' must be a string, got {json_kind(value)}")
    if len(value) > max_len:
        raise EventError("WrongType", f"field '{name}' is longer than {max_len} characters")
    return value


def _updated_at(value: Any, record: RawRecord) -> datetime:
    if value is None:
        return datetime.fromtimestamp(record.origin.timestamp_ms / 1000, tz=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Debezium encodes timestamps as epoch millis (or micros for MicroTimestamp).
        seconds = value / 1_000_000 if value > 10**14 else value / 1000
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, ValueError, OSError):
            raise EventError(
                "InvalidTimestamp", f"field 'updated_at' {value} is out of the datetime range"
            ) from None
    if not isinstance(value, str):
        raise EventError(
            "WrongType", f"field 'updated_at' must be an ISO 8601 string, got {json_kind(value)}"
        )
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise EventError(
            "InvalidTimestamp", f"field 'updated_at' is not ISO 8601: {value[:64]!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _scalar(value: Any) -> bool:
    """A metadata value by type: a string, number or boolean, or a flat list of them."""
    if isinstance(value, str | int | float | bool):
        return True
    return isinstance(value, list) and all(isinstance(v, str | int | float | bool) for v in value)


def _storable_columns(columns: dict[str, Any]) -> dict[str, Any]:
    """The columns that are storable metadata, the first MAX_METADATA_KEYS of them."""
    kept: dict[str, Any] = {}
    for key, value in columns.items():
        if len(kept) >= MAX_METADATA_KEYS:
            break
        if not _scalar(value):
            continue
        try:
            check_metadata({**kept, key: value})
        except InvalidValue:
            continue
        kept[key] = value
    return kept


def _metadata(value: Any) -> dict[str, Any]:
    """Storable metadata (keys, types, ranges, sizes: see `validation`), else an EventError."""
    return _checked(check_metadata, value)


def _loads(text: str) -> Any:
    """JSON text -> value, refusing NaN/Infinity, huge numbers, deep nesting, lone surrogates."""
    return _checked(loads_strict, text)


def _checked(check: Callable[[Any], _T], value: Any) -> _T:
    try:
        return check(value)
    except InvalidValue as exc:
        raise EventError(exc.error_class, str(exc)) from None
