"""BM25 sparse vectors from `qdrant_edge.Bm25`: the same token ids and formula as Qdrant server's
BM25, with no model download. The collection's IDF modifier supplies the IDF part."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SparseVector:
    """A sparse vector as token ids and weights (what the BM25 vectors of the index hold)."""

    indices: list[int]
    values: list[float]


class Bm25Encoder:
    def __init__(self, avg_len: float = 256.0) -> None:
        from qdrant_edge import Bm25, Bm25Config

        self._bm25 = Bm25(Bm25Config(avg_len=avg_len, language="english"))

    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        out = []
        for text in texts:
            vec = self._bm25.embed_document(text)
            out.append(SparseVector(list(vec.indices), list(vec.values)))
        return out

    def embed_query(self, text: str) -> SparseVector:
        vec = self._bm25.embed_query(text)
        return SparseVector(list(vec.indices), list(vec.values))
