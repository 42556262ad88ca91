"""Token-aware, structure-aware chunking (pure and deterministic).

Text is split on markdown headings first, then paragraphs, then sentences, then words, and the
pieces are packed greedily up to the token budget. Token counts come from the embedder's own
tokenizer (passed in as a TokenCounter), so no chunk is silently truncated by the model.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
FENCE = re.compile(r"^\s*(```|~~~)")
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")
SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
MAX_CONTEXT_TOKENS = 48


class TokenCounter(Protocol):
    """Counts tokens (without special tokens) with the embedding model's tokenizer."""

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    @property
    def max_tokens(self) -> int:
        """Largest input the model embeds without truncation, special tokens excluded."""


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    headings: tuple[str, ...]
    token_count: int
    context: str = ""

    @property
    def heading_path(self) -> str:
        return " > ".join(self.headings)


def context_prefix(title: str, headings: Sequence[str]) -> str:
    """Title and heading path, prepended to the chunk text when embedding."""
    parts = [p for p in (title.strip(), *headings) if p]
    return " > ".join(parts)


def embedding_text(chunk: Chunk) -> str:
    """What the model embeds: the (trimmed) title/heading context, then the chunk text."""
    return f"{chunk.context}\n\n{chunk.text}" if chunk.context else chunk.text


def stored_chunk_embedding_text(
    title: str, heading_path: str, text: str, counter: TokenCounter
) -> str:
    """`embedding_text` rebuilt from a stored point's title, heading path and text (a re-index
    that re-embeds payloads must embed exactly what ingest embedded)."""
    prefix = " > ".join(p for p in (title.strip(), heading_path) if p)
    context, _ = _trim_context(prefix, counter)
    return f"{context}\n\n{text}" if context else text


def _trim_context(prefix: str, counter: TokenCounter) -> tuple[str, int]:
    """Shorten a very long title/heading path so it never pushes chunk text out of the model."""
    if not prefix:
        return "", 0
    words = prefix.split()
    n = counter.count_tokens([prefix])[0]
    while n + 2 > MAX_CONTEXT_TOKENS and len(words) > 1:
        words = words[: max(1, len(words) * MAX_CONTEXT_TOKENS // (n + 2))]
        prefix = " ".join(words)
        n = counter.count_tokens([prefix])[0]
    return prefix, n + 2  # + the blank line between context and text


@dataclass(frozen=True, slots=True)
class Section:
    headings: tuple[str, ...]
    body: str


def split_sections(text: str) -> list[Section]:
    """Split on ATX headings outside fenced code, tracking the heading path."""
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        joined = "\n".join(body).strip()
        if joined:
            sections.append(Section(tuple(h for _, h in stack), joined))
        body.clear()

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else HEADING.match(line)
        if match:
            flush()
            level = len(match.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, match.group(2).strip()))
        else:
            body.append(line)
    flush()
    return sections


CDC_MIN_FILL = 0.7  # a content-defined cut needs the chunk this full (of its budget)
CDC_PERIOD = 3  # about one piece in CDC_PERIOD marks a boundary
CDC_BACKTRACK_FILL = 0.4  # at the budget, cut at the last boundary piece past this fill


def _marks_boundary(piece: str) -> bool:
    """Whether a chunk may end after this piece: decided by its content alone (stable hash),
    so the same text gives the same boundaries wherever it moves in the document."""
    return zlib.crc32(piece.encode("utf-8", "surrogatepass")) % CDC_PERIOD == 0


def _split_words(text: str) -> list[str]:
    return text.split()


class _Packer:
    """Greedy packing of pieces into chunks of at most `budget` tokens, with word overlap."""

    def __init__(self, counter: TokenCounter, budget: int, overlap: int) -> None:
        self.counter = counter
        self.budget = budget
        self.overlap = overlap
        # Sentences of paragraphs too long for one chunk: content-defined cut candidates. Whole
        # paragraphs are packed greedily, which is already stable under local edits (measured).
        self.sentences: set[str] = set()

    def pieces(self, body: str) -> list[tuple[str, int]]:
        """Break a section into pieces that each fit the budget: paragraph > sentence > word."""
        out: list[tuple[str, int]] = []
        paragraphs = [p.strip() for p in PARAGRAPH_BREAK.split(body) if p.strip()]
        counts = self.counter.count_tokens(paragraphs) if paragraphs else []
        for para, n in zip(paragraphs, counts, strict=True):
            if n <= self.budget:
                out.append((para, n))
                continue
            sentences = [s for s in SENTENCE_END.split(para) if s.strip()]
            s_counts = self.counter.count_tokens(sentences)
            for sent, sn in zip(sentences, s_counts, strict=True):
                if sn <= self.budget:
                    out.append((sent, sn))
                    self.sentences.add(sent)
                else:
                    out.extend(self.words(sent))
        return out

    def words(self, sentence: str) -> list[tuple[str, int]]:
        words = _split_words(sentence)
        counts = self.counter.count_tokens(words)
        out: list[tuple[str, int]] = []
        for word, n in zip(words, counts, strict=True):
            if n <= self.budget:
                out.append((word, n))
                continue
            # A single "word" longer than the budget (a URL, base64): cut by characters.
            step = max(1, len(word) * self.budget // (n + 1))
            for start in range(0, len(word), step):
                part = word[start : start + step]
                out.append((part, self.counter.count_tokens([part])[0]))
        return out

    def pack(self, pieces: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Content-defined chunking: a chunk ends after a piece whose content marks a boundary
        (`_marks_boundary`) once the chunk is `CDC_MIN_FILL` full; when the budget is reached
        first, it ends at the last such piece past `CDC_BACKTRACK_FILL`, and only when there is
        none at the budget. Boundaries so depend on the text around them, not on everything
        before them: an edit changes the chunks around it, not every later one."""
        chunks: list[tuple[str, int]] = []
        current: list[tuple[str, int]] = []
        used = 0
        fresh = 0  # tokens of `current` that are not overlap from the previous chunk
        last_cut: int | None = None  # pieces of `current` up to a backtrack boundary

        def cut(at: int, next_tokens: int) -> None:
            nonlocal current, used, fresh, last_cut
            emitted, rest = current[:at], current[at:]
            chunks.append(self._emit(emitted))
            rest_tokens = sum(c for _, c in rest)
            current = self._overlap_tail(emitted, limit=self.budget - next_tokens - rest_tokens)
            current += rest
            used = sum(c for _, c in current)
            fresh = rest_tokens
            last_cut = None

        for piece, n in pieces:
            if current and used + n > self.budget:
                cut(last_cut if last_cut is not None else len(current), n)
            current.append((piece, n))
            used += n
            fresh += n
            if fresh <= self.overlap or piece not in self.sentences or not _marks_boundary(piece):
                continue
            if used >= self.budget * CDC_MIN_FILL:
                cut(len(current), 0)
            elif used >= self.budget * CDC_BACKTRACK_FILL:
                last_cut = len(current)
        if current and fresh:
            chunks.append(self._emit(current))
        return chunks

    def _emit(self, parts: list[tuple[str, int]]) -> tuple[str, int]:
        text = " ".join(p for p, _ in parts)
        text = re.sub(r"[ \t]+", " ", text).strip()
        return text, sum(n for _, n in parts)

    def _overlap_tail(self, parts: list[tuple[str, int]], limit: int) -> list[tuple[str, int]]:
        """The last words of the previous chunk, at most `overlap` tokens, to start the next."""
        allowed = min(self.overlap, limit)
        if allowed <= 0:
            return []
        words = _split_words(" ".join(p for p, _ in parts[-4:]))[-allowed:]
        counts = self.counter.count_tokens(words) if words else []
        tail: list[tuple[str, int]] = []
        total = 0
        for word, n in zip(reversed(words), reversed(counts), strict=True):
            if total + n > allowed:
                break
            tail.append((word, n))
            total += n
        tail.reverse()
        return tail


def chunk_document(
    text: str,
    title: str,
    counter: TokenCounter,
    max_tokens: int,
    overlap: int,
) -> list[Chunk]:
    """Chunks whose `title > headings` prefix plus text fit the model's input, in order."""
    if overlap >= max_tokens:
        raise ValueError("overlap must be smaller than max_tokens")
    chunks: list[Chunk] = []
    for section in split_sections(text):
        prefix, prefix_tokens = _trim_context(context_prefix(title, section.headings), counter)
        budget = max(16, min(max_tokens, counter.max_tokens - prefix_tokens))
        packer = _Packer(counter, budget, min(overlap, budget // 2))
        for chunk_text, _ in packer.pack(packer.pieces(section.body)):
            real = counter.count_tokens([chunk_text])[0]
            if real > budget:  # token counts were not additive here; split again by words
                for sub_text, _ in packer.pack(packer.words(chunk_text)):
                    n = counter.count_tokens([sub_text])[0]
                    chunks.append(Chunk(len(chunks), sub_text, section.headings, n, prefix))
                continue
            chunks.append(Chunk(len(chunks), chunk_text, section.headings, real, prefix))
    return chunks
