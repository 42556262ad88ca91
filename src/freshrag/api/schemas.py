"""Request and response bodies. Bounds live here so violations get a 422 naming the field."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from freshrag.core.principals import (
    MAX_ACL_PRINCIPALS,
    MAX_PRINCIPAL_ID_CHARS,
    PrincipalError,
    check_id,
)
from freshrag.ingest.formats import (
    MAX_CONTENT_TYPE_CHARS,
    SUPPORTED_CONTENT_TYPES,
    normalize_content_type,
)
from freshrag.ingest.validation import (
    MAX_METADATA_KEY_CHARS,
    MAX_VERSION,
    check_metadata,
    check_unicode,
    is_metadata_key,
)

MAX_TOP_K = 100
MAX_FILTER_VALUES = 100
MAX_QUERY_CHARS = 2_000
MAX_MESSAGES = 32
MAX_MESSAGE_CHARS = 8_000

MAX_FILTER_STRING = 1_000
# Request bodies take JSON types as they are: `true` is not 1 and "5" is not 5 (a 422 names the
# field; models set strict=True). Datetimes opt out per field: JSON carries ISO 8601 strings.

MetaValue = str | int | float | bool


def _iso_string(value: Any) -> Any:
    """A date-time field takes an ISO 8601 string (the schema's `format: date-time`); lax
    datetime parsing alone would also take a number as a Unix time."""
    if value is not None and not isinstance(value, str | datetime):
        raise ValueError("expected an ISO 8601 date-time string")
    return value


# Datetimes opt out of strict mode (JSON carries them as strings), but only strings qualify.
IsoDateTime = Annotated[datetime, BeforeValidator(_iso_string)]


def _metadata_key(key: str) -> str:
    if not is_metadata_key(key):
        raise ValueError("a metadata key is letters, digits, '_' or '-' (1-128 characters)")
    return key


# A metadata key a filter can name: it becomes a payload path (`metadata.<key>`), so only plain
# names; quotes, brackets, dots and blanks would change or break the path.
# The same rule the flow applies to stored keys (`ingest.validation.is_metadata_key`).
MetadataKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS),
    AfterValidator(_metadata_key),
]
# Filter values: bounded strings and 64-bit integers (what the index stores and compares).
FilterInt = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
FilterStr = Annotated[str, StringConstraints(max_length=MAX_FILTER_STRING)]
FilterValue = FilterStr | FilterInt | bool
# metadata_any: one kind per list (the index matches a list of strings or of integers).
AnyStrings = Annotated[list[FilterStr], Field(min_length=1, max_length=MAX_FILTER_VALUES)]
AnyInts = Annotated[list[FilterInt], Field(min_length=1, max_length=MAX_FILTER_VALUES)]
# A query or question must say something: one character that str.strip() keeps (Python also
# counts \x1c-\x1f as blanks; JSON Schema's and pydantic's `\s` do not).
NOT_BLANK = r"[^\s\x1c-\x1f]"


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be blank")
    return value


class Filters(BaseModel):
    """Optional narrowing; the tenant is never here: it comes from the API key."""

    model_config = ConfigDict(extra="forbid", strict=True)

    metadata: dict[MetadataKey, FilterValue] = Field(
        default_factory=dict,
        max_length=20,
        description="metadata key -> value; keys are 1-64 of A-Z a-z 0-9 _ -",
        json_schema_extra={"additionalProperties": False},
    )
    metadata_any: dict[MetadataKey, AnyStrings | AnyInts] = Field(
        default_factory=dict, max_length=20, json_schema_extra={"additionalProperties": False}
    )
    updated_after: IsoDateTime | None = Field(None, strict=False)  # ISO 8601 strings
    updated_before: IsoDateTime | None = Field(None, strict=False)
    doc_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=512)]] | None = Field(
        None, max_length=MAX_FILTER_VALUES
    )


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK)
    top_k: int = Field(10, ge=1, le=MAX_TOP_K)
    filters: Filters = Field(default_factory=Filters)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    fresh: bool = Field(False, description="boost recently updated documents")
    half_life_hours: float | None = Field(None, gt=0, le=24 * 365 * 10)
    dedupe: bool = Field(False, description="one hit per document (its best chunk)")
    group: bool = Field(False, description="hits grouped per document")
    consistency_token: str | None = Field(None, max_length=2_000)

    _query_not_blank = field_validator("query")(_not_blank)


class SourcePosition(BaseModel):
    """Where the indexed version came from: its change event's Kafka record."""

    topic: str
    partition: int
    offset: int


def source_position(topic: str, partition: int, offset: int) -> SourcePosition | None:
    """None for points written before the position was stored (offset -1)."""
    if offset < 0 or partition < 0:
        return None
    return SourcePosition(topic=topic, partition=partition, offset=offset)


class HitOut(BaseModel):
    doc_id: str
    chunk_index: int
    score: float
    text: str
    title: str
    url: str | None
    version: int
    updated_at: datetime | None
    heading: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    indexed_at: datetime | None = Field(None, description="when this chunk was written")
    source_position: SourcePosition | None = Field(
        None, description="the change event it was indexed from (null: not recorded)"
    )


class IndexInfo(BaseModel):
    """How fresh the answer is: index watermarks and the newest document used."""

    watermark: dict[str, int] = Field(default_factory=dict)
    freshest_document_age_s: float | None = None
    generation: str | None = Field(
        None, description="the index generation that answered (see `freshrag reindex`)"
    )
    retrieved_at: datetime | None = Field(
        None,
        description="when retrieval ran; `watermark` was read just before it, so every record "
        "below it (per partition) was visible to this answer",
    )


class SearchOut(BaseModel):
    hits: list[HitOut]
    mode: str
    took_ms: float
    index: IndexInfo = Field(default_factory=IndexInfo)


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | None = Field(None, max_length=MAX_MESSAGE_CHARS)


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    question: str | None = Field(None, min_length=1, max_length=MAX_QUERY_CHARS, pattern=NOT_BLANK)
    messages: list[Message] | None = Field(None, max_length=MAX_MESSAGES)
    filters: Filters = Field(default_factory=Filters)
    top_k: int = Field(5, ge=1, le=20)
    fresh: bool = False
    stream: bool = False
    consistency_token: str | None = Field(None, max_length=2_000)
    on_ungrounded: Literal["extractive", "raw"] = Field(
        "extractive",
        description="when the answer states a number, date or name its sources do not hold "
        "(after one strict retry): quote the sources instead, or return it flagged as raw",
    )

    _question_not_blank = field_validator("question")(_not_blank)


class CitationOut(BaseModel):
    number: int
    doc_id: str
    title: str
    url: str | None
    version: int
    updated_at: str | None
    chunk_index: int
    text: str
    indexed_at: str | None = Field(None, description="when this chunk was written")
    source_position: SourcePosition | None = Field(
        None, description="the change event it was indexed from (null: not recorded)"
    )


class SourceOut(CitationOut):
    """A source the answer could use; citations are the subset the answer cites."""

    score: float


class UnsupportedOut(BaseModel):
    """A sentence of the model's answer with claims its sources do not hold."""

    sentence: str
    missing: list[str]


class GroundingOut(BaseModel):
    """What the grounding guard decided (shared by /v1/chat, SSE `done`, OpenAI extras)."""

    grounded: bool = Field(
        True, description="every number, date and name of `answer` is in its sources"
    )
    answer_type: Literal["generated", "extractive", "raw", "refusal"] = Field(
        "generated",
        description="generated by the LLM and verified; extractive: quoted from the sources "
        "because the LLM's answer was not supported; raw: the unverified LLM answer, on request",
    )
    unsupported: list[UnsupportedOut] = Field(
        default_factory=list, description="the LLM's sentences that failed the check"
    )
    retried: bool = Field(False, description="a stricter second LLM call was made")
    warning: str | None = None


class ChatOut(GroundingOut):
    answer: str
    citations: list[CitationOut]
    sources: list[SourceOut]
    refused: bool
    citations_inferred: bool = Field(
        False, description="the model wrote no [n] markers; they were attributed by word overlap"
    )
    index: IndexInfo = Field(default_factory=IndexInfo)


class OpenAIChatBody(BaseModel):
    """The subset of the OpenAI chat completions request that freshrag honours."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    user: str | None = None


def _principal_id(value: str) -> str:
    try:
        return check_id(value, "a principal id")
    except PrincipalError as exc:
        raise ValueError(str(exc)) from None


PrincipalId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_PRINCIPAL_ID_CHARS),
    AfterValidator(_principal_id),
]


class AclBody(BaseModel):
    """Who may read the document (exact, case-sensitive ids). Without `acl` the whole tenant
    may; with both lists empty nobody may (only a later upsert with another `acl` opens it)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    users: list[PrincipalId] = Field(default_factory=list, max_length=MAX_ACL_PRINCIPALS)
    groups: list[PrincipalId] = Field(default_factory=list, max_length=MAX_ACL_PRINCIPALS)

    @model_validator(mode="after")
    def _bounded(self) -> AclBody:
        if len(self.users) + len(self.groups) > MAX_ACL_PRINCIPALS:
            raise ValueError(f"acl names over {MAX_ACL_PRINCIPALS} users and groups")
        return self


class DocumentBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=512)
    title: str = Field("", max_length=2_000)
    text: str = Field(min_length=1)
    url: str | None = Field(None, max_length=4_096)
    source: str | None = Field("api", max_length=256)
    metadata: dict[str, MetaValue | list[MetaValue]] = Field(default_factory=dict, max_length=50)
    version: int | None = Field(None, ge=0, le=MAX_VERSION)
    updated_at: IsoDateTime | None = Field(None, strict=False)  # ISO 8601 strings
    content_type: str | None = Field(
        None,
        max_length=MAX_CONTENT_TYPE_CHARS,
        description=f"how to read `text`: one of {', '.join(SUPPORTED_CONTENT_TYPES)} "
        "(case-insensitive, parameters such as '; charset=utf-8' ignored); default "
        "text/markdown. HTML is indexed as markdown-like text without scripts, styles, "
        "navigation, forms or hidden elements",
    )
    acl: AclBody | None = Field(
        None,
        description="users and groups allowed to read the document (API keys carry the "
        "caller's principals); absent or null: the whole tenant",
    )

    # The flow's own parse-time checks (freshrag.ingest.validation), so the API answers 422 for
    # what the flow would otherwise dead-letter: NaN/huge numbers, bad keys, lone surrogates.
    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_metadata(value)

    @field_validator("id", "title", "text", "url", "source")
    @classmethod
    def _valid_unicode(cls, value: str | None) -> str | None:
        return None if value is None else check_unicode(value, "the text")

    @field_validator("content_type")
    @classmethod
    def _supported_content_type(cls, value: str | None) -> str | None:
        if value is not None:
            normalize_content_type(value)  # UnsupportedContentType (a ValueError): 422
        return value


class WriteOut(BaseModel):
    id: str
    op: Literal["upsert", "delete"]
    topic: str
    partition: int
    offset: int
    consistency_token: str


class DocumentStatusOut(BaseModel):
    id: str
    version: int
    chunk_count: int
    indexed_at: str
    updated_at: str


class ErrorOut(BaseModel):
    error: dict[str, Any]
