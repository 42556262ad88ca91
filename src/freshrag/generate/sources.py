"""What a retrieved chunk is to the generation stage: a `Source`, and its number in a prompt.

Its own module, so the prompt, the citations and the grounding guard can all use it without
importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Source:
    """One retrieved chunk as the prompt and citations need it (built by the API from hits)."""

    doc_id: str
    title: str
    url: str | None
    version: int
    updated_at: datetime | str | None
    chunk_index: int
    text: str
    score: float = 0.0
    # provenance: when the chunk was written and the change event's record (-1: not recorded)
    indexed_at: datetime | str | None = None
    topic: str = ""
    partition: int = -1
    offset: int = -1

    @property
    def updated_at_iso(self) -> str | None:
        return _iso(self.updated_at)

    @property
    def indexed_at_iso(self) -> str | None:
        return _iso(self.indexed_at)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], score: float = 0.0) -> Source:
        """Build from an index-contract payload (see retrieve.contract.ChunkPoint.payload)."""
        return cls(
            doc_id=str(payload["doc_id"]),
            title=str(payload.get("title") or ""),
            url=payload.get("url") or None,
            version=int(payload.get("version", 0)),
            updated_at=payload.get("updated_at"),
            chunk_index=int(payload.get("chunk_index", 0)),
            text=str(payload.get("text") or ""),
            score=float(score),
            indexed_at=payload.get("indexed_at"),
            topic=str(payload.get("topic") or ""),
            partition=_int(payload.get("partition")),
            offset=_int(payload.get("offset")),
        )


def _iso(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _int(value: Any) -> int:
    try:
        return int(value) if value is not None else -1
    except (TypeError, ValueError):
        return -1


@dataclass(frozen=True, slots=True)
class NumberedSource:
    """A source as placed in the prompt: its citation number and whether it was cut short."""

    number: int
    source: Source
    truncated: bool = False


__all__ = ["NumberedSource", "Source"]
