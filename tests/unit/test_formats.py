"""`content_type` at the door: ingest/formats.py (pure) and its use in the parse step."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrag.ingest.chunking import split_sections
from freshrag.ingest.events import (
    DeadLetter,
    RawRecord,
    RecordOrigin,
    Upsert,
    native_event,
    parse_record,
    upsert_event,
)
from freshrag.ingest.formats import (
    MAX_HTML_DEPTH,
    FormatError,
    HtmlTooDeep,
    InvalidText,
    UnsupportedContentType,
    escape_markup,
    html_to_markdown,
    nesting_depth,
    normalize_content_type,
    to_indexable_text,
)

PAGES = Path(__file__).resolve().parent.parent / "data" / "html"
ORIGIN = RecordOrigin("documents", 0, 7, 1_700_000_000_000)


def headings_of(text: str) -> list[tuple[str, ...]]:
    return [s.headings for s in split_sections(text)]


def heading_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"#{1,6} ", line)]


# -- content types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "media"),
    [
        (None, "text/markdown"),
        ("text/markdown", "text/markdown"),
        ("TEXT/HTML", "text/html"),
        ("text/html; charset=utf-8", "text/html"),
        ("  Text/Plain ;charset=ISO-8859-1", "text/plain"),
        ("text/markdown; variant=GFM", "text/markdown"),
    ],
)
def test_supported_content_types_are_matched_case_insensitively_without_parameters(
    given: str | None, media: str
) -> None:
    assert normalize_content_type(given) == media


@pytest.mark.parametrize(
    "given", ["application/pdf", "", "html", "text/htm", "text/x-markdown", "text/*", ";text/html"]
)
def test_unknown_content_types_raise_a_typed_error_naming_the_supported_ones(given: str) -> None:
    with pytest.raises(UnsupportedContentType, match="text/markdown, text/html, text/plain"):
        to_indexable_text("hello", given)
    assert UnsupportedContentType.error_class == "UnsupportedContentType"


def test_markdown_is_unchanged_and_plain_text_is_never_split_as_markdown() -> None:
    doc = "# Title\n\nbody\n```\n# not a heading\n```\n## Sub\nmore"
    assert to_indexable_text(doc, None) == doc
    assert to_indexable_text(doc, "text/markdown") == doc
    plain = to_indexable_text(doc, "text/plain")
    assert plain == "\\# Title\n\nbody\n\\```\n\\# not a heading\n\\```\n\\## Sub\nmore"
    assert headings_of(plain) == [()]  # one section, no heading path
    assert headings_of(doc) == [("Title",), ("Title", "Sub")]
    calm = "no markup here\n#hashtag and a # in the middle\n  ~ tilde"
    assert to_indexable_text(calm, "text/plain") == calm


# -- HTML --------------------------------------------------------------------------------------


def test_html_headings_become_atx_lines_and_chunking_follows_them() -> None:
    html = (
        "<html><head><title>T</title><style>h1{color:red}</style></head><body>"
        "<h1>Refund <em>policy</em></h1><p>Intro &amp; scope.</p>"
        "<h2>Eligibility</h2><p>Within 30 days.</p>"
        "<h3 id='x'>Exceptions<a class='headerlink' href='#x'>¶</a></h3><p>Gift cards.</p>"
        "<h2>Process</h2><p>Email us.</p></body></html>"
    )
    out = html_to_markdown(html)
    assert heading_lines(out) == [
        "# Refund policy",
        "## Eligibility",
        "### Exceptions",
        "## Process",
    ]
    assert headings_of(out) == [
        ("Refund policy",),
        ("Refund policy", "Eligibility"),
        ("Refund policy", "Eligibility", "Exceptions"),
        ("Refund policy", "Process"),
    ]
    assert "Intro & scope." in out and "color:red" not in out and "\nT\n" not in out


def test_html_lists_code_tables_and_entities_stay_readable() -> None:
    html = """
    <p>Caf&eacute; &lt;b&gt; &#x27;quoted&#39; &nbsp;a&nbsp;b</p>
    <ul><li>first</li><li>second<ol><li>inner one</li><li>inner two</li></ol></li></ul>
    <pre><code class="lang-py">def f(x):
        return x &lt; 2  # not a heading
</code></pre>
    <p>Call <code>f(1)</code> here<code></code>.</p>
    <table><tr><th>Plan</th><th>Price</th></tr><tr><td>Basic</td><td>10 | 12</td></tr></table>
    <p>line one<br>line two</p>
    """
    out = html_to_markdown(html)
    assert "Café <b> 'quoted' a b" in out
    assert "- first\n- second\n  1. inner one\n  2. inner two" in out
    assert "```\ndef f(x):\n        return x < 2  # not a heading\n```" in out
    assert "Call `f(1)` here." in out
    assert "| Plan | Price |\n| --- | --- |\n| Basic | 10 \\| 12 |" in out
    assert "line one\nline two" in out


def test_html_drops_scripts_styles_navigation_forms_and_hidden_elements() -> None:
    html = """<body>
    <header><a href="/">SiteHeaderLink</a></header>
    <nav><ul><li>NavItem</li></ul></nav>
    <div role="navigation">RoleNav</div><div role="banner">RoleBanner</div>
    <main><article><header><h1>Article Title</h1></header>
      <p>Real content.</p><script>var secret = "ScriptText";</script>
      <style>.x{content:"StyleText"}</style><noscript>NoScriptText</noscript>
      <template><p>TemplateText</p></template>
      <form><label>FormLabel</label><input value="InputValue"><button>ButtonText</button></form>
      <p hidden>HiddenAttr</p><p aria-hidden="true">AriaHidden</p>
      <p style="color: red; display : none">DisplayNone</p>
      <p style="visibility:hidden">VisibilityHidden</p>
      <iframe>IframeText</iframe><svg><text>SvgText</text></svg>
      <!-- CommentText -->
      <footer>Article footer kept</footer></article>
      <aside>AsideText</aside></main>
    <footer>SiteFooterText</footer></body>"""
    out = html_to_markdown(html)
    assert heading_lines(out) == ["# Article Title"]
    assert "Real content." in out and "Article footer kept" in out
    for dropped in (
        "SiteHeaderLink NavItem RoleNav RoleBanner ScriptText StyleText NoScriptText "
        "TemplateText FormLabel InputValue ButtonText HiddenAttr AriaHidden DisplayNone "
        "VisibilityHidden IframeText SvgText CommentText AsideText SiteFooterText"
    ).split():
        assert dropped not in out, dropped


def test_html_text_that_looks_like_markup_cannot_fake_a_heading_or_a_fence() -> None:
    out = html_to_markdown("<h1>Real</h1><p># fake heading</p><p>``` fake fence</p><p>after</p>")
    assert heading_lines(out) == ["# Real"]
    assert headings_of(out) == [("Real",)]
    code = html_to_markdown("<pre>```\n# in code\n```</pre><h2>Next</h2><p>x</p>")
    assert code.startswith("```\n\\```\n# in code\n\\```\n```")
    assert headings_of(code) == [(), ("Next",)]


def test_html_that_is_nothing_but_scripts_converts_to_empty_text() -> None:
    assert html_to_markdown("<script>alert(1)</script><style>p{}</style><nav>x</nav>") == ""


def test_deep_html_is_refused_before_parsing_and_tag_soup_is_not_mistaken_for_depth() -> None:
    with pytest.raises(HtmlTooDeep) as info:
        html_to_markdown("<div>" * (MAX_HTML_DEPTH + 10) + "x")
    assert info.value.error_class == "HtmlTooDeep"
    assert "512" in str(info.value)
    assert html_to_markdown("<div>" * 400 + "deep text") == "deep text"
    # unclosed <p>, <li>, cells and list items close each other, as in a browser
    soup = (
        "<p>a<p>b" * 2000
        + "<ul><li>x<li>y</ul>" * 900
        + "<table><tr><td>1<td>2<tr><td>3</table>" * 500
    )
    assert nesting_depth(soup) < 10
    assert "a" in html_to_markdown(soup)
    assert nesting_depth("<ul><li>x" * 200) == 400  # unclosed lists do nest
    # raw text and comments are not tags
    assert nesting_depth("<script>" + "<div>" * 5000 + "</script><!--" + "<b>" * 5000 + "-->") <= 1


def test_a_lone_surrogate_is_a_typed_error() -> None:
    with pytest.raises(InvalidText):
        to_indexable_text("<p>a\ud800</p>", "text/html")


# -- the fixture pages -------------------------------------------------------------------------

FIXTURES: dict[str, tuple[list[str], list[str], list[str]]] = {
    # page: (heading lines, in that order, that must be there; text kept; text dropped)
    "rustdoc_what_is_rustdoc.html": (
        [
            "# What is rustdoc?",
            "## Basic usage",
            "## Configuring rustdoc",
            "## Using rustdoc with Cargo",
            "## Outer and inner documentation",
            "## Using standalone Markdown files",
            "## Summary",
        ],
        ["$ cargo new docs --lib", "The standard Rust distribution ships with a tool"],
        ["localStorage", "mdbook-theme", "sidebar_toggle", "path_to_root", "Auto, Light"],
    ),
    "node_string_decoder.html": (
        [
            "## String decoder",
            "### Class: StringDecoder",
            "#### new StringDecoder([encoding])",
            "#### stringDecoder.end([buffer])",
            "#### stringDecoder.write(buffer)",
        ],
        ["provides an API for decoding `Buffer` objects", "const decoder = new StringDecoder"],
        ["localStorage", "@media", "Asynchronous context tracking", "C++ embedder API"],
    ),
    "python_idle_help.html": (
        ["# IDLE", "## Menus", "### File menu (Shell and Editor)", "## idlelib"],
        ["IDLE is Python’s Integrated Development and Learning Environment."],
        ["Report a Bug", "This Page", "Show Source", "Quick search", "modules |"],
    ),
    "pydoc_colorsys.html": (
        [],
        ["Conversion functions between RGB and other color systems.", "rgb_to_hsv(r, g, b)"],
        [],
    ),
}


@pytest.mark.parametrize("page", sorted(FIXTURES))
def test_real_pages_keep_their_headings_and_lose_their_chrome(page: str) -> None:
    expected, kept, dropped = FIXTURES[page]
    out = to_indexable_text((PAGES / page).read_text(encoding="utf-8"), "text/html")
    lines = heading_lines(out)
    assert [h for h in lines if h in expected] == expected, lines
    for text in kept:
        assert text in out, text
    for text in dropped:
        assert text not in out, text
    # Sphinx/Node permalink anchors do not end up in the heading path
    assert all(not h.endswith(("#", "¶")) for h in lines)


# -- properties ----------------------------------------------------------------------------------

SECRET = "zqsecret"
WORD = st.text("abcdefgh", min_size=1, max_size=6)
TEXT = st.one_of(
    WORD,
    st.sampled_from(["&amp;", "&lt;", "&#x41;", "&bogus;", "# x", "```", "|", "\n", "  ", "é"]),
)
TAGS = ["div", "p", "span", "b", "em", "a", "li", "ul", "ol", "table", "tr", "td", "th",
        "pre", "code", "blockquote", "section", "article", "main", "dl", "dt", "dd", "br",
        "header", "footer", "h2", "h4", "font", "tbody", "caption", "img"]  # fmt: skip
ATTRS = st.sampled_from(["", " hidden", ' style="display:none"', ' class="x"', ' role="main"'])


@st.composite
def html_tree(draw: st.DrawFn, depth: int = 0) -> str:
    """Random HTML, often ill-formed: unclosed and stray tags, scripts holding SECRET."""
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 4 if depth < 4 else 1))):
        kind = draw(st.integers(0, 9))
        if kind <= 3:
            parts.append(draw(TEXT))
        elif kind == 4:
            # (not <noscript>: before <body>, HTML5 moves its text out into the body)
            raw = draw(st.sampled_from(["script", "style", "template"]))
            inner = draw(st.sampled_from(["", "<div>", "</p>", "<!--", "</scr"]))
            parts.append(f"<{raw}>{SECRET}{inner}{SECRET}</{raw}>")
        elif kind == 5:
            parts.append(draw(st.sampled_from(["</div>", "</td>", "<li>", "<p>", "<!-- c -->"])))
        else:
            tag = draw(st.sampled_from(TAGS))
            inner = draw(html_tree(depth + 1)) if depth < 6 else ""
            close = draw(st.booleans())
            parts.append(f"<{tag}{draw(ATTRS)}>{inner}" + (f"</{tag}>" if close else ""))
    return "".join(parts)


@settings(max_examples=300, deadline=2000)
@given(html=html_tree())
def test_random_html_converts_without_script_text_and_within_a_size_bound(html: str) -> None:
    try:
        out = to_indexable_text(html, "text/html")
    except FormatError:
        return
    assert SECRET not in out
    assert len(out) <= 4 * len(html) + 16


@settings(max_examples=300, deadline=2000)
@given(
    text=st.text(
        st.one_of(st.characters(), st.sampled_from(list("<>/&;#!-=\"' \n`~|"))), max_size=300
    ),
    media=st.sampled_from(["text/html", "text/plain", "text/markdown", "TEXT/HTML; x=y"]),
)
def test_arbitrary_text_raises_nothing_but_the_typed_error(text: str, media: str) -> None:
    try:
        out = to_indexable_text(text, media)
    except FormatError:
        return
    assert isinstance(out, str)


@st.composite
def sectioned_page(draw: st.DrawFn) -> tuple[str, list[tuple[int, str]]]:
    """A page of headings and paragraphs (with inline noise), and its (level, title)s."""
    html: list[str] = []
    headings: list[tuple[int, str]] = []
    for i in range(draw(st.integers(1, 8))):
        level = draw(st.integers(1, 6))
        title = f"{draw(WORD)} h{i}"
        wrap = draw(st.sampled_from(["{}", "<span>{}</span>", "<a href='#'>{}</a>", "{}¶"]))
        html.append(f"<h{level}>{wrap.format(title)}</h{level}>")
        headings.append((level, title))
        for _ in range(draw(st.integers(0, 2))):
            noise = draw(st.sampled_from(["", f"<script>{SECRET}</script>", "<nav>menu</nav>"]))
            html.append(f"<p>{draw(WORD)} # {draw(WORD)}{noise}</p>")
    return "".join(html), headings


@settings(max_examples=200, deadline=2000)
@given(page=sectioned_page())
def test_every_heading_survives_and_chunking_sees_the_same_heading_paths(
    page: tuple[str, list[tuple[int, str]]],
) -> None:
    html, headings = page
    out = to_indexable_text(html, "text/html")
    assert heading_lines(out) == ["#" * level + " " + title for level, title in headings]
    stack: list[tuple[int, str]] = []
    paths = set()
    for level, title in headings:
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        paths.add(tuple(t for _, t in stack))
    assert {s.headings for s in split_sections(out)} <= paths
    assert SECRET not in out and "menu" not in out


@settings(max_examples=200, deadline=1000)
@given(text=st.text(st.sampled_from(list("#`~ \tab\n\r")), max_size=80))
def test_escaped_plain_text_never_has_a_heading_or_fence(text: str) -> None:
    out = escape_markup(text)
    assert headings_of(out) in ([()], [])
    assert out.replace("\\", "") == text.replace("\\", "")


# -- the parse step ------------------------------------------------------------------------------


def parse(body: dict[str, Any]) -> Upsert | DeadLetter:
    event = parse_record(RawRecord(b"k", json.dumps(body).encode(), ORIGIN))
    assert isinstance(event, Upsert | DeadLetter)
    return event


HTML_DOC = "<h1>Guide</h1><p>Keep the lid on.</p><script>steal()</script><nav>Home</nav>"


def test_an_html_event_is_stored_as_its_markdown_like_text_with_its_content_type() -> None:
    event = parse(upsert_event("d1", HTML_DOC, version=3, content_type="Text/HTML; charset=utf-8"))
    assert isinstance(event, Upsert)
    assert event.text == "# Guide\n\nKeep the lid on."
    assert event.metadata == {"content_type": "text/html"}
    # the event's own metadata key wins; re-reading the written-back event changes nothing
    own = parse(upsert_event("d1", HTML_DOC, content_type="text/html", metadata={"k": 1}))
    assert isinstance(own, Upsert) and own.metadata == {"k": 1, "content_type": "text/html"}
    mine = parse(upsert_event("d1", "x", content_type="text/plain", metadata={"content_type": "a"}))
    assert isinstance(mine, Upsert) and mine.metadata == {"content_type": "a"}
    again = parse_record(RawRecord(b"k", json.dumps(native_event(event)).encode(), ORIGIN))
    assert again == event


def test_no_content_type_is_todays_behaviour() -> None:
    event = parse(upsert_event("d1", "# T\n\n<b>kept as is</b>"))
    assert isinstance(event, Upsert)
    assert event.text == "# T\n\n<b>kept as is</b>" and event.metadata == {}


@pytest.mark.parametrize(
    ("content_type", "text", "error_class"),
    [
        ("application/pdf", "hello", "UnsupportedContentType"),
        ("", "hello", "UnsupportedContentType"),
        (7, "hello", "WrongType"),
        (["text/html"], "hello", "WrongType"),
        ("text/html", "<script>only()</script>", "EmptyText"),
        ("text/html", "<div>" * 600 + "x", "HtmlTooDeep"),
    ],
)
def test_bad_content_goes_to_the_dlq_with_a_reason(
    content_type: Any, text: str, error_class: str
) -> None:
    dead = parse({"op": "upsert", "id": "d1", "text": text, "content_type": content_type})
    assert isinstance(dead, DeadLetter)
    assert dead.error_class == error_class and dead.step == "parse"
    assert dead.message.strip()


def test_a_debezium_row_names_its_content_type_in_a_column() -> None:
    row = {"id": 5, "text": "<h2>Row</h2><p>Body</p>", "content_type": "text/html", "lang": "en"}
    body = {"payload": {"op": "c", "after": row}, "schema": {}}
    event = parse(body)
    assert isinstance(event, Upsert)
    assert event.text == "## Row\n\nBody"
    assert event.metadata == {"lang": "en", "content_type": "text/html"}
    bad = parse({"op": "u", "after": {**row, "content_type": "image/png"}})
    assert isinstance(bad, DeadLetter) and bad.error_class == "UnsupportedContentType"


@settings(max_examples=300, deadline=2000)
@given(
    content_type=st.one_of(
        st.none(),
        st.integers(),
        st.booleans(),
        st.lists(st.text(max_size=3), max_size=2),
        st.text(max_size=40),
        st.sampled_from(["text/html", "TEXT/PLAIN;x", "text/markdown ", "text/html;;;"]),
    ),
    text=st.text(st.sampled_from(list("ab<>/ #&;\n")), min_size=1, max_size=60).map(
        lambda t: f"x {t}"
    ),
)
def test_any_content_type_value_parses_or_is_dead_lettered_with_a_known_reason(
    content_type: Any, text: str
) -> None:
    event = parse({"op": "upsert", "id": "d", "text": text, "content_type": content_type})
    if isinstance(event, DeadLetter):
        assert event.error_class in {
            "UnsupportedContentType",
            "WrongType",
            "EmptyText",
            "HtmlTooDeep",
        }, event
    else:
        supported = content_type is None or (
            isinstance(content_type, str)
            and normalize_content_type(content_type) in {"text/markdown", "text/html", "text/plain"}
        )
        assert supported and event.text.strip()


# -- freshrag load -------------------------------------------------------------------------------


def test_load_sends_html_files_as_html_and_jsonl_rows_with_their_content_type(
    tmp_path: Path,
) -> None:
    from freshrag.ingest.loader import SourceKind, iter_events

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "page.html").write_text(
        "<html><head><title>x</title></head><body><h1>Kettle guide</h1><p>Boil.</p></body></html>"
    )
    (docs / "notes.txt").write_text("# Notes\n\nplain")
    events = {e["id"]: e for e in iter_events(SourceKind("folder", docs))}
    assert events["page.html"]["content_type"] == "text/html"
    assert events["page.html"]["title"] == "Kettle guide"
    assert events["page.html"]["text"].startswith("<html>")  # the original goes to Kafka
    assert "content_type" not in events["notes.txt"]  # as before: read as markdown
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"id": "r1", "text": "<p>x</p>", "content_type": "text/html"})
        + "\n"
        + json.dumps({"id": "r2", "text": "y"})
        + "\n"
    )
    loaded = {e["id"]: e for e in iter_events(SourceKind("jsonl", rows))}
    assert loaded["r1"]["content_type"] == "text/html"
    assert "content_type" not in loaded["r2"]
