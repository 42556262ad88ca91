"""Index generations: which settings built an index, and which generation serves (pure).

A logical index (`FRESHRAG_COLLECTION`, say `freshrag`) is served by one physical generation at a
time: the collection itself (the first generation, and every index built before generations
existed), or `freshrag-g<fingerprint>` built by `freshrag reindex`. Each generation records a
manifest: the embedding model, its dimension, the chunking and the BM25 settings that built it.
A writer whose settings differ is refused with the differences spelled out, so an index never
mixes chunks of two chunkings or vectors of two models. Readers follow a serving pointer (a
Qdrant alias on the server, an atomically replaced file for Edge); switching it is the one atomic
step of a re-index, and rolling back is the same switch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from freshrag.core.settings import Settings

# Bump when chunking or BM25 encoding changes what the same settings produce.
CHUNKER_VERSION = 2  # 2: content-defined cuts (an edit no longer shifts every later chunk)
BM25_AVG_LEN = 256.0  # what `Bm25Encoder()` uses for documents
GENERATION_MARK = "-g"
SERVING_SUFFIX = "_serving"  # the server alias; `collection` itself may be a generation
MANIFEST_VERSION = 1

# Settings that decide what is stored: a difference in any of them makes another index.
BUILD_KEYS = (
    "model",
    "precision",
    "dimension",
    "chunk_tokens",
    "chunk_overlap",
    "chunker_version",
    "bm25_avg_len",
)


class IndexSettingsMismatch(RuntimeError):
    """This process's build settings differ from those the index was built with."""


@dataclass(frozen=True, slots=True)
class IndexManifest:
    """What built a generation: `build` decides compatibility, `embedder` rebuilds the model."""

    build: Mapping[str, Any]
    embedder: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = ""
    version: int = MANIFEST_VERSION

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(dict(self.build), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fingerprint": self.fingerprint,
            "build": dict(self.build),
            "embedder": dict(self.embedder),
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IndexManifest:
        build = data.get("build")
        if not isinstance(build, Mapping):
            raise ValueError("index manifest without a 'build' object")
        embedder = data.get("embedder") or {}
        if not isinstance(embedder, Mapping):
            raise ValueError("index manifest 'embedder' is not an object")
        return cls(dict(build), dict(embedder), str(data.get("created_at", "")))

    def settings_update(self) -> dict[str, Any]:
        """Settings fields that rebuild this generation's embedder and chunker."""
        update: dict[str, Any] = {
            "chunk_tokens": int(self.build["chunk_tokens"]),
            "chunk_overlap": int(self.build["chunk_overlap"]),
        }
        update.update(self.embedder)
        model_path = update.get("embedder_model_path")
        if isinstance(model_path, str):
            update["embedder_model_path"] = Path(model_path)
        return update


def model_identity(settings: Settings) -> str:
    """The embedding model as a stable name (paths differ between machines; names don't)."""
    if settings.embed_backend == "openai":
        return f"openai:{settings.embed_openai_model}"
    if settings.embedder_model_path is None:
        return "bundled:all-MiniLM-L6-v2"
    return f"local:{settings.embedder_model_path.name}"


def embedder_settings(settings: Settings) -> dict[str, Any]:
    """The settings fields a reader needs to embed queries the way this generation's chunks
    were (secrets excluded: they stay in the reader's environment)."""
    names = [
        n
        for n in Settings.model_fields
        if n in ("embed_backend", "embedder_model_path")
        or (n.startswith("embed_openai_") and "key" not in n)
    ]
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(settings, name)
        out[name] = str(value) if value is not None and not isinstance(value, int | str) else value
    return out


def manifest_for(settings: Settings, dimension: int, now: datetime | None = None) -> IndexManifest:
    backend = str(settings.embed_backend)
    build = {
        "model": model_identity(settings),
        "precision": "int8" if backend.endswith("int8") else "fp32",
        "dimension": int(dimension),
        "chunk_tokens": settings.chunk_tokens,
        "chunk_overlap": settings.chunk_overlap,
        "chunker_version": CHUNKER_VERSION,
        "bm25_avg_len": BM25_AVG_LEN,
    }
    created = (now or datetime.now(UTC)).isoformat()
    return IndexManifest(build, embedder_settings(settings), created)


def differences(recorded: IndexManifest, mine: IndexManifest) -> list[str]:
    """Human-readable differences between two manifests' build settings (empty: compatible)."""
    out = []
    for key in BUILD_KEYS:
        a, b = recorded.build.get(key), mine.build.get(key)
        if a != b:
            out.append(f"{key}: index {a!r}, this process {b!r}")
    return out


def generation_name(collection: str, manifest: IndexManifest) -> str:
    return f"{collection}{GENERATION_MARK}{manifest.fingerprint}"


class Catalog(Protocol):
    """The generations of one logical index, on one backend (`retrieve.catalog`)."""

    collection: str

    def exists(self, name: str) -> bool: ...

    def generations(self) -> list[str]:
        """Every generation of this logical index (the collection itself included)."""

    def read_manifest(self, name: str) -> IndexManifest | None: ...

    def write_manifest(self, name: str, manifest: IndexManifest) -> None: ...

    def serving(self) -> str:
        """The serving generation: the pointer's target, else the collection itself."""

    def switch(self, name: str) -> None:
        """Point readers at `name`, atomically."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class WriterChoice:
    generation: str
    adopted: bool  # the generation had no manifest yet; this process's was recorded


def choose_writer_generation(catalog: Catalog, mine: IndexManifest) -> WriterChoice:
    """The generation a writer with `mine` settings writes to, or IndexSettingsMismatch.

    The serving generation when it matches (or has no manifest yet: it is new, or older than
    manifests, and adopts this one); else a kept generation built with these settings (one being
    re-indexed, or the previous one after a switch, kept current for a roll-back).
    """
    serving = catalog.serving()
    recorded = catalog.read_manifest(serving)
    if recorded is None:
        return WriterChoice(serving, adopted=True)
    if not differences(recorded, mine):
        return WriterChoice(serving, adopted=False)
    for name in (generation_name(catalog.collection, mine), catalog.collection):
        if name == serving or not catalog.exists(name):
            continue
        other = catalog.read_manifest(name)
        if other is not None and not differences(other, mine):
            return WriterChoice(name, adopted=False)
    diff = "; ".join(differences(recorded, mine))
    raise IndexSettingsMismatch(
        f"the serving index {serving!r} was built with other settings ({diff}). Use that "
        f"index's settings, or build a new generation with these: `freshrag reindex`"
    )
