"""Citation markers: parsing forms, dropping invalid numbers, streaming without split markers."""

from __future__ import annotations

import re

import pytest

from freshrag.generate.citations import (
    CitationStream,
    clean_stream,
    extract_citations,
    marker_numbers,
    strip_invalid_markers,
    strip_markers,
)
from freshrag.generate.sources import Source

SOURCES = [
    Source(
        doc_id=f"doc-{i}",
        title=f"Title {i}",
        url=f"https://kb/{i}",
        version=i * 10,
        updated_at=f"2026-01-0{i}T00:00:00+00:00",
        chunk_index=i - 1,
        text=f"chunk text {i}",
        score=0.5,
    )
    for i in (1, 2, 3)
]


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("Refunds take 5 days [1].", [1]),
        ("Both agree [1, 2].", [1, 2]),
        ("Both agree [2][1].", [2, 1]),
        ("Semicolons [3; 1] and spaces [ 2 ].", [3, 1, 2]),
        ("Verbose [Source 2] and [sources 1, 3].", [2, 1, 3]),
        ("Repeated [1] and again [1] then [2].", [1, 2]),
        ("Code like items[1] or x[2] is not a citation.", []),
        ("Links [text](http://x) and [see above] are not citations.", []),
    ],
)
def test_marker_forms(text: str, numbers: list[int]) -> None:
    assert marker_numbers(text) == numbers


def test_extract_citations_in_first_appearance_order_with_metadata() -> None:
    text = "B is true [2]. A too [1][2]. Nonsense [7] and [0]. More [3, 9]."
    citations = extract_citations(text, SOURCES)
    assert [c.number for c in citations] == [2, 1, 3]
    second = citations[0]
    assert (second.doc_id, second.title, second.url, second.version) == (
        "doc-2",
        "Title 2",
        "https://kb/2",
        20,
    )
    assert second.updated_at == "2026-01-02T00:00:00+00:00"
    assert (second.chunk_index, second.text) == (1, "chunk text 2")


def test_no_sources_means_no_citations() -> None:
    assert extract_citations("Claim [1].", []) == []


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("Fact [1]. Other [7].", "Fact [1]. Other."),
        ("Mixed [1, 7, 2].", "Mixed [1, 2]."),
        ("Chained [1][9][2] end.", "Chained [1][2] end."),
        ("Dup [2, 2].", "Dup [2]."),
        ("[4] Leading marker.", " Leading marker."),
        ("Valid stays [Source 3].", "Valid stays [Source 3]."),
        ("No markers at all.", "No markers at all."),
    ],
)
def test_strip_invalid_markers(text: str, cleaned: str) -> None:
    assert strip_invalid_markers(text, n_sources=3) == cleaned


def test_strip_markers_removes_all() -> None:
    assert strip_markers("Answer [1] and [2, 3].") == "Answer and."


TEXT = (
    "Refunds take 30 days [1]. Shipping is free [2][5]. "
    "Some say [see above] or items[1]; others [1, 9]. Unknown [12]. End [3]"
)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_stream_matches_final_cleanup_for_any_chunking(size: int) -> None:
    chunks = [TEXT[i : i + size] for i in range(0, len(TEXT), size)]
    stream = CitationStream(n_sources=3)
    pieces = [stream.feed(c) for c in chunks]
    pieces.append(stream.finish())
    assert "".join(pieces) == strip_invalid_markers(TEXT, 3)
    assert stream.text == "".join(pieces)
    # Never half a marker on screen: no emitted piece ends inside `[digits`.
    for piece in pieces:
        assert not re.search(r"\[\s*\d[\d\s,;]*$", piece)


def test_stream_holds_open_bracket_until_resolved() -> None:
    stream = CitationStream(n_sources=2)
    assert stream.feed("Fact ") == "Fact"
    assert stream.feed("[") == ""
    assert stream.feed("2") == ""
    assert stream.feed("]") == " [2]"
    assert stream.feed(" and [") == " and"
    assert stream.feed("8]") == ""  # invalid marker vanishes with its leading blank
    assert stream.feed(".") == "."
    assert stream.finish() == ""
    assert stream.text == "Fact [2] and."


def test_stream_releases_long_non_marker_brackets() -> None:
    stream = CitationStream(n_sources=1)
    out = stream.feed("[" + "a" * 40)
    assert out.startswith("[aaa")


def test_clean_stream_generator() -> None:
    assert "".join(clean_stream(["A [", "1", "] B [", "4", "]"], 1)) == "A [1] B"


def test_attribution_cites_the_supporting_source_only() -> None:
    from freshrag.generate.citations import attribute, extract_citations
    from freshrag.generate.sources import Source

    sources = [
        Source("refunds", "Refund policy", None, 1, None, 0, "Return hardware within 30 days."),
        Source("volcano", "Volcano facts", None, 1, None, 0, "Mount Etna is a volcano on Sicily."),
    ]
    text = attribute("The volcano on Sicily is Mount Etna. Paris is in France.", sources)
    assert text == "The volcano on Sicily is Mount Etna [2]. Paris is in France."
    assert [c.doc_id for c in extract_citations(text, sources)] == ["volcano"]
    assert attribute("The answer is: 3.", sources) == "The answer is: 3."  # unsupported number
    assert attribute("The answer is: 30 days.", sources) == "The answer is: 30 days [1]."
    assert attribute("Etna [2] erupts.", sources) == "Etna [2] erupts."  # model already cited
