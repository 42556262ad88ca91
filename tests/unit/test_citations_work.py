"""`strip_markers` and the stream cleaner do linear work on blank-heavy text (issue 10).

The regex engine's steps cannot be counted from Python, so the bound is checked in two
deterministic parts instead of with a clock: (1) every regex the module runs starts matching at
a single fixed character (a pattern that starts with `[ \\t]*` rescans each run of blanks from
every position in it: quadratic), and (2) the text handed to regexes in total stays within a
small multiple of the input size. Behaviour is checked against the former regex.
"""

from __future__ import annotations

import re
import re._parser as sre_parse  # type: ignore[import-not-found]
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrag.generate import citations
from freshrag.generate.citations import CitationStream, strip_invalid_markers, strip_markers

N = 8_000
# The implementation before issue 10: the blanks before a marker matched by the regex itself.
_OLD_SPACED = re.compile(rf"([ \t]*){citations.MARKER_RE.pattern}", re.IGNORECASE)


def old_strip_markers(text: str) -> str:
    return _OLD_SPACED.sub("", text)


def old_strip_invalid(text: str, n_sources: int) -> str:
    def fix(match: re.Match[str]) -> str:
        original = [int(d) for d in re.findall(r"\d+", match.group(2))]
        valid = [n for n in dict.fromkeys(original) if 1 <= n <= n_sources]
        if not valid:
            return ""
        if valid == original:
            return match.group(0)
        return match.group(1) + "[" + ", ".join(str(n) for n in valid) + "]"

    return _OLD_SPACED.sub(fix, text)


class RecordingPattern:
    """Delegates to a compiled pattern and records how much text each call was given."""

    def __init__(self, pattern: re.Pattern[str], calls: list[tuple[str, int]]) -> None:
        self._pattern = pattern
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._pattern, name)
        if not callable(attr) or name not in {
            "sub", "subn", "search", "match", "fullmatch", "finditer", "findall", "split",
        }:  # fmt: skip
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            subject = next((a for a in args if isinstance(a, str)), "")
            self._calls.append((self._pattern.pattern, len(subject)))
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def regex_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    calls: list[tuple[str, int]] = []
    for name, value in vars(citations).items():
        if isinstance(value, re.Pattern):
            monkeypatch.setattr(citations, name, RecordingPattern(value, calls))
    yield calls


def starts_at_one_character(pattern: str) -> bool:
    """After zero-width assertions, the first item consumes exactly one character."""
    for op, _ in sre_parse.parse(pattern):
        if str(op) in ("ASSERT", "ASSERT_NOT", "AT"):
            continue
        return str(op) in ("LITERAL", "IN", "NOT_LITERAL", "ANY")
    return True


BLANK_HEAVY = [
    " " * N,
    "\t " * (N // 2),
    "a" + " " * N + "[1]",
    ("[1" + " " * 100) * (N // 100),
    (" " * 50 + "[2] ") * (N // 50),
    "x" + " " * (N // 2) + "[Source 3" + " " * (N // 2),
]


@pytest.mark.parametrize("text", BLANK_HEAVY, ids=range(len(BLANK_HEAVY)))
def test_strip_markers_work_is_linear(text: str, regex_calls: list[tuple[str, int]]) -> None:
    out = strip_markers(text)
    assert out == old_strip_markers(text)
    assert regex_calls, "strip_markers runs the marker regex"
    assert all(starts_at_one_character(p) for p, _ in regex_calls), regex_calls
    assert sum(n for _, n in regex_calls) <= 2 * len(text)


def test_stream_cleaner_work_is_linear(regex_calls: list[tuple[str, int]]) -> None:
    stream = CitationStream(2)
    pieces = [stream.feed(" " * 1000 + "word") for _ in range(8)] + [stream.finish()]
    text = "".join(pieces)
    assert text.count(" ") == 8000 and text.endswith("word")
    assert all(starts_at_one_character(p) for p, _ in regex_calls)
    assert sum(n for _, n in regex_calls) <= 4 * 8 * 1004


def test_the_former_regex_fails_the_structural_bound() -> None:
    """The check above would have caught the quadratic version."""
    assert not starts_at_one_character(_OLD_SPACED.pattern)
    assert starts_at_one_character(citations.MARKER_RE.pattern)


pieces = st.sampled_from([" ", "\t", "  ", "[", "]", "1", "7", ",", ";", "x", "Source ", "."])


@settings(max_examples=400, derandomize=True, deadline=None)
@given(st.lists(pieces, max_size=40).map("".join))
def test_same_result_as_the_former_regex(text: str) -> None:
    assert strip_markers(text) == old_strip_markers(text)
    for n_sources in (0, 1, 2):
        assert strip_invalid_markers(text, n_sources) == old_strip_invalid(text, n_sources)
