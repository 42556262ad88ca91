"""fetch_document rebuilds a document from its chunks: the chunker's overlap is dropped, the
text comes back word for word (pure: the real chunker with a whitespace token counter)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from freshrag.api.auth import Unauthorized
from freshrag.api.mcp_server import (
    API_KEY_ENV,
    invalid_arguments,
    join_chunks,
    overlap_words,
    stdio_caller,
)
from freshrag.core.settings import load_settings
from freshrag.ingest.chunking import chunk_document


class WordCounter:
    """One token per whitespace-separated word (what the chunker's overlap is cut by)."""

    max_tokens = 10_000

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]


def rebuild(text: str, max_tokens: int, overlap: int, title: str = "") -> str:
    chunks = chunk_document(text, title, WordCounter(), max_tokens, overlap)
    return join_chunks([(c.heading_path, c.text) for c in chunks], overlap)


def test_overlap_words() -> None:
    assert overlap_words(["a", "b", "c"], ["b", "c", "d"], 5) == 2
    assert overlap_words(["a", "b", "c"], ["b", "c", "d"], 1) == 0  # c != b
    assert overlap_words(["a", "b", "c"], ["c", "d"], 5) == 1
    assert overlap_words(["a"], ["a"], 5) == 0  # a chunk always carries a word of its own
    assert overlap_words([], ["a"], 5) == 0


# Distinct words: with repeated word runs a longest-match join may drop a repeat (documented).
WORDS = st.lists(
    st.from_regex(r"[a-z]{1,6}", fullmatch=True), min_size=1, max_size=400, unique=True
)


@settings(max_examples=150, deadline=None)
@given(
    words=WORDS,
    breaks=st.sets(st.integers(0, 400), max_size=20),
    sentence_ends=st.sets(st.integers(0, 400), max_size=40),
    max_tokens=st.integers(16, 60),
    overlap=st.integers(0, 15),
)
def test_chunked_text_comes_back_word_for_word(
    words: list[str], breaks: set[int], sentence_ends: set[int], max_tokens: int, overlap: int
) -> None:
    parts = []
    for i, w in enumerate(words):
        parts.append(w + ("." if i in sentence_ends else ""))
        parts.append("\n\n" if i in breaks else " ")
    text = "".join(parts).strip()
    assert rebuild(text, max_tokens, overlap).split() == text.split()


def test_sections_come_back_with_their_headings_and_lines() -> None:
    intro = " ".join(f"intro{i}" for i in range(50))
    body = " ".join(f"body{i}" for i in range(80))
    text = f"{intro}\n\n# Guide\n\n## Install\n\n{body}\n\n## Use\n\n- one\n- two\n- three"
    out = rebuild(text, 20, 5)
    assert out.split() == text.split()
    assert "# Guide\n\n## Install\n\nbody0" in out
    assert "## Use\n\n- one\n- two\n- three" in out  # lines inside a chunk are kept


def test_one_chunk_is_its_text() -> None:
    assert rebuild("Mount Etna erupts often.", 64, 8) == "Mount Etna erupts often."


def test_stdio_caller_resolves_the_key_like_a_bearer_key() -> None:
    s = load_settings(api_keys={"k-123456789": "acme|user:alice"})
    caller = stdio_caller(s, {API_KEY_ENV: "k-123456789"})
    assert caller.tenant == "acme" and "user:alice" in caller.principals
    with pytest.raises(Unauthorized) as exc:
        stdio_caller(s, {API_KEY_ENV: "wrong-987654321"})
    assert "wrong-987654321" not in exc.value.message
    with pytest.raises(Unauthorized):
        stdio_caller(s, {})
    off = load_settings(auth_enabled=False)
    assert stdio_caller(off, {}).tenant == "default"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    top_k: int = Field(1, ge=1)


def test_invalid_arguments_name_the_field_and_never_echo_the_input() -> None:
    with pytest.raises(ValidationError) as exc:
        _Args.model_validate({"top_k": 0, "secret": "s3cr3t-value"})
    failure = invalid_arguments(exc.value)
    assert failure.status == 422
    assert failure.error["type"] == "invalid" and failure.error["field"] in ("top_k", "secret")
    assert {d["field"] for d in failure.error["details"]} == {"top_k", "secret"}
    assert "s3cr3t-value" not in str(failure.error)
