"""Small fakes for unit tests of pure logic (never used where the real component is tested)."""

from __future__ import annotations

from collections.abc import Sequence

from freshrag.retrieve.contract import SparseVector


class WhitespaceTokens:
    """Counts one token per whitespace-separated word; max input 254 tokens."""

    max_tokens = 254

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


class FakeDense(WhitespaceTokens):
    def __init__(self, fail_on: str | None = None) -> None:
        self.fail_on = fail_on
        self.calls: list[int] = []

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(len(texts))
        if self.fail_on and any(self.fail_on in t for t in texts):
            raise RuntimeError(f"cannot embed text containing {self.fail_on!r}")
        return [[float(len(t))] + [0.0] * 383 for t in texts]


class FakeSparse:
    def embed_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        return [SparseVector([1], [1.0]) for _ in texts]
