"""Citation markers in model output: parse, validate against the prompt's sources, clean (pure).

The model is told to cite as `[n]`; it also writes `[1, 2]`, `[1][2]` and `[Source 1]`. A
number that names no source in the prompt is a hallucinated citation: it is dropped from the
structured citations and can be rewritten out of the text, so a client never shows a link that
points nowhere. `CitationStream` does the same on token deltas without splitting a marker.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from freshrag.generate.sources import Source

# `[1]`, `[1, 2]`, `[1;2]`, `[Source 1]`, `[sources 1, 2]`; not `x[1]` (indexing in code).
_NUM = r"(?:sources?\s*)?\d{1,4}"
MARKER_RE = re.compile(rf"(?<!\w)\[\s*({_NUM}(?:\s*[,;]\s*{_NUM})*)\s*\]", re.IGNORECASE)
_BLANKS = " \t"  # blanks before a removed marker go with it, so no " ." is left behind
_DIGITS_RE = re.compile(r"\d+")
# A tail that may still grow into a marker: held back by CitationStream until it resolves.
_PARTIAL_RE = re.compile(r"\[[\sA-Za-z0-9,;]*")
_MAX_PARTIAL = 32


@dataclass(frozen=True, slots=True)
class Citation:
    """One cited source, in the order the answer first cites it."""

    number: int
    doc_id: str
    title: str
    url: str | None
    version: int
    updated_at: str | None
    chunk_index: int
    text: str
    # provenance (see Source): when written, and the change event's record
    indexed_at: str | None = None
    topic: str = ""
    partition: int = -1
    offset: int = -1

    @classmethod
    def from_source(cls, number: int, source: Source) -> Citation:
        return cls(
            number=number,
            doc_id=source.doc_id,
            title=source.title,
            url=source.url,
            version=source.version,
            updated_at=source.updated_at_iso,
            chunk_index=source.chunk_index,
            text=source.text,
            indexed_at=source.indexed_at_iso,
            topic=source.topic,
            partition=source.partition,
            offset=source.offset,
        )


def _numbers(group: str) -> list[int]:
    return [int(d) for d in _DIGITS_RE.findall(group)]


def marker_numbers(text: str) -> list[int]:
    """Every cited number in order of first appearance, deduplicated (valid or not)."""
    seen: dict[int, None] = {}
    for match in MARKER_RE.finditer(text):
        for n in _numbers(match.group(1)):
            seen.setdefault(n, None)
    return list(seen)


def extract_citations(text: str, sources: Sequence[Source]) -> list[Citation]:
    """Structured citations for the markers in `text`; `[n]` means `sources[n - 1]`.

    Numbers outside 1..len(sources) are dropped; each source appears once, at its first cite.
    """
    return [
        Citation.from_source(n, sources[n - 1])
        for n in marker_numbers(text)
        if 1 <= n <= len(sources)
    ]


def _sub_markers(text: str, fix: Callable[[re.Match[str]], str | None]) -> str:
    """Replace each marker by `fix(match)`; None keeps it, "" removes it with the blanks before.

    Linear in len(text): markers are found by MARKER_RE, which starts at a `[`, and the blanks
    before a removed marker are trimmed from the text between markers. (A regex that starts
    with `[ \t]*` rescans every run of blanks from each of its positions: quadratic.)
    """
    out: list[str] = []
    pos = 0
    for match in MARKER_RE.finditer(text):
        between = text[pos : match.start()]
        pos = match.end()
        replacement = fix(match)
        if replacement is None:
            out.append(between + match.group(0))
        elif replacement:
            out.append(between + replacement)
        else:
            out.append(between.rstrip(_BLANKS))
    out.append(text[pos:])
    return "".join(out)


def _rewrite(text: str, n_sources: int, prev: str = "") -> str:
    """Rewrite markers in `text` to keep only valid numbers; `prev` is context for lookbehind."""

    def fix(match: re.Match[str]) -> str | None:
        original = _numbers(match.group(1))
        valid = [n for n in dict.fromkeys(original) if 1 <= n <= n_sources]
        if not valid:
            return ""
        if valid == original:
            return None
        return "[" + ", ".join(str(n) for n in valid) + "]"

    # A word character just before the text means a leading `[1]` is indexing, not a cite.
    if prev[-1:].isalnum() or prev[-1:] == "_":
        return _sub_markers(prev[-1] + text, fix)[1:]
    return _sub_markers(text, fix)


def strip_invalid_markers(text: str, n_sources: int) -> str:
    """Remove citation numbers that point to no source (`[1, 7]` -> `[1]`, `[7]` -> ``)."""
    return _rewrite(text, n_sources)


def strip_markers(text: str) -> str:
    """Remove every marker: earlier turns' numbers mean other sources in a new prompt."""
    return _sub_markers(text, lambda _: "")


class CitationStream:
    """Cleans streamed token deltas: drops invalid markers, never emits half a marker.

    Text that could still become a marker (an open `[` followed by digits, letters, commas) is
    held back until it closes or proves to be ordinary text, so a client never renders `[7`
    and then has to take it back. Feed deltas with `feed`, then call `finish` once.
    """

    def __init__(self, n_sources: int) -> None:
        self._n = n_sources
        self._pending = ""
        self._last = ""  # last emitted character: lookbehind context for the next marker
        self._emitted: list[str] = []

    def feed(self, delta: str) -> str:
        """Return the part of the stream that is now safe to show (may be empty)."""
        buf = self._pending + delta
        hold = ""
        cut = buf.rfind("[")
        if cut != -1:
            tail = buf[cut:]
            if len(tail) <= _MAX_PARTIAL and _PARTIAL_RE.fullmatch(tail):
                buf, hold = buf[:cut], tail
        # Blanks may precede a marker that turns out invalid; hold them until we know.
        stripped = buf.rstrip(" \t")
        buf, hold = stripped, buf[len(stripped) :] + hold
        self._pending = hold
        return self._emit(buf)

    def finish(self) -> str:
        """Flush whatever is still held back (the stream ended)."""
        buf, self._pending = self._pending, ""
        return self._emit(buf)

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._emitted)

    def _emit(self, buf: str) -> str:
        if not buf:
            return ""
        out = _rewrite(buf, self._n, self._last)
        if out:
            self._last = out[-1]
            self._emitted.append(out)
        return out


def clean_stream(deltas: Iterable[str], n_sources: int) -> Iterable[str]:
    """Convenience generator over `CitationStream` (skips empty pieces)."""
    stream = CitationStream(n_sources)
    for delta in deltas:
        piece = stream.feed(delta)
        if piece:
            yield piece
    tail = stream.finish()
    if tail:
        yield tail


# --- post-hoc attribution -------------------------------------------------------------------
# Small models often answer correctly from the sources but write no markers. Rather than return
# an uncited answer, each answer sentence is matched against the sources by content-word
# overlap and the best-supported source is cited. Sentences with no clear support stay uncited,
# so an answer the sources do not back (a wrong number, outside knowledge) gets no citation.

_WORD_RE = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
# A sentence ends at . ! ? before a blank or the end: "43.17 metres" and "v2.0" stay whole (a
# marker must never land inside a number).
_SENTENCE_RE = re.compile(r"(?:[^.!?\n]|[.!?](?=[^\s.!?]))+(?:[.!?]+|\n|$)")
_STOPWORDS = frozenset(
    (
        "a an and are as at be been but by can could did do does for from had has have he her "
        "his how i if in into is it its may might more most no not of on or our she should so "
        "some such than that the their them then there these they this those to was we were "
        "what when where which who whom why will with would you your yes answer answers source "
        "sources question according based says said"
    ).split()
)


def content_terms(text: str) -> set[str]:
    return {w for w in _WORD_RE.findall(text.lower()) if w not in _STOPWORDS}


def attribute(text: str, sources: Sequence[Source], min_ratio: float = 0.5) -> str:
    """Append `[n]` to each sentence that source n supports best; used only when the model
    cited nothing. Support: at least half of the sentence's content words (and at least two,
    unless the sentence has fewer) appear in the source text or title."""
    if not sources or marker_numbers(text):
        return text
    vocab = [content_terms(f"{s.title} {s.text}") for s in sources]
    out: list[str] = []
    for match in _SENTENCE_RE.finditer(text):
        sentence = match.group(0)
        terms = content_terms(sentence)
        best, best_hits = 0, 0
        for number, words in enumerate(vocab, 1):
            hits = len(terms & words)
            if hits > best_hits:
                best, best_hits = number, hits
        needed = min(2, len(terms))
        if terms and best and best_hits >= needed and best_hits / len(terms) >= min_ratio:
            body = sentence.rstrip()
            trail = sentence[len(body) :]
            end = len(body.rstrip(".!?"))
            sentence = f"{body[:end]} [{best}]{body[end:]}{trail}"
        out.append(sentence)
    return "".join(out) if out else text
