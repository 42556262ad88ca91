"""HTML -> indexable text: speed and quality of the candidate libraries on real pages.

Pages: the fixtures in tests/data/html (a Rust mdBook page, a Node.js API page, a Sphinx page
of the Python docs, a pydoc page; see its README). For each page a ground truth is taken from
its own structure: the content root (the page's `main`/article element), the headings inside
it, the paragraphs/list items/code blocks inside it, and the junk: the text of every
`script`/`style`, and the navigation link texts that do not also occur in the content.

Printed per library and page: ms/page (median of the runs), headings kept as `#` lines, content
blocks kept, junk snippets leaked, output characters. A library that is not installed is
skipped. Then the pathological inputs (deep nesting, misnested formatting, huge flat pages)
through freshrag's converter: time, output size and peak memory.

    python -m benchmarks.html_formats [runs]
"""

from __future__ import annotations

import contextlib
import re
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser

from freshrag.ingest.formats import FormatError, html_to_markdown

PAGES = Path(__file__).resolve().parent.parent / "tests" / "data" / "html"
# The element that holds each page's content (what a reader would call the page).
CONTENT_ROOT = {
    "rustdoc_what_is_rustdoc.html": "main",
    "node_string_decoder.html": "#apicontent",
    "python_idle_help.html": "div.body",
    "pydoc_colorsys.html": "body",
}
NAV = "nav, [role=navigation], .sphinxsidebar, #column2, .sidebar"
_WS = re.compile(r"\s+")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
DROP = (
    "script, style, noscript, template, nav, aside, form, header, footer, iframe, svg, "
    "[hidden], [aria-hidden=true], [role=navigation], [role=banner], [role=contentinfo], "
    "[role=complementary], [role=search]"
)


def norm(text: str) -> str:
    return _WS.sub(" ", text).strip().rstrip("#¶ ").strip().lower()


def converters() -> dict[str, Callable[[str], str]]:
    out: dict[str, Callable[[str], str]] = {"freshrag (selectolax/lexbor)": html_to_markdown}
    try:
        from markdownify import ATX, markdownify

        out["markdownify"] = lambda html: markdownify(html, heading_style=ATX)
    except ImportError:
        pass
    try:
        import html2text

        def h2t(html: str) -> str:
            conv = html2text.HTML2Text()
            conv.body_width = 0
            conv.ignore_images = True
            return conv.handle(html)

        out["html2text"] = h2t

        def cleaned_h2t(html: str) -> str:  # the same dropping rules, then html2text
            tree = LexborHTMLParser(html)
            for node in tree.css(DROP):
                node.decompose()
            return h2t(tree.html or "")

        out["selectolax clean + html2text"] = cleaned_h2t
    except ImportError:
        pass
    try:
        import trafilatura

        out["trafilatura"] = lambda html: (
            trafilatura.extract(
                html,
                output_format="markdown",
                include_formatting=True,
                include_tables=True,
                include_comments=False,
            )
            or ""
        )
    except ImportError:
        pass
    try:
        from inscriptis import get_text

        out["inscriptis"] = get_text
    except ImportError:
        pass
    return out


def truth(name: str, html: str) -> tuple[list[str], list[str], list[str]]:
    """(headings, content blocks, junk snippets) of a page."""
    tree = LexborHTMLParser(html)
    root = tree.css_first(CONTENT_ROOT[name])
    assert root is not None, name
    for hidden in root.css("script, style, [hidden]"):
        hidden.decompose()
    headings = [norm(h.text()) for h in root.css("h1, h2, h3, h4, h5, h6") if norm(h.text())]
    blocks = [norm(b.text())[:40] for b in root.css("p, li, pre") if len(norm(b.text())) >= 20]
    content = norm(root.text())
    junk: list[str] = []
    full = LexborHTMLParser(html)
    for node in full.css("script, style"):
        text = norm(node.text())
        if len(text) >= 20:
            junk.append(text[:40])
    for nav in full.css(NAV):
        for link in nav.css("a"):
            text = norm(link.text())
            if len(text) >= 8 and text not in content:
                junk.append(text)
    return headings, blocks, sorted(set(junk))


def score(
    out: str, headings: list[str], blocks: list[str], junk: list[str]
) -> tuple[int, int, int]:
    out = _LINK.sub(r"\1", out).replace("`", "")  # links count as their text, code as text
    lines = {norm(line.lstrip("#")) for line in out.splitlines() if line.startswith("#")}
    flat = norm(out.replace("**", "").replace("\\", ""))
    kept_h = sum(1 for h in headings if h in lines)
    kept_b = sum(1 for b in blocks if b.replace("`", "") in flat)
    leaked = sum(1 for j in junk if j in flat)
    return kept_h, kept_b, leaked


def measure(fn: Callable[[str], str], html: str, runs: int) -> tuple[float, str]:
    times = []
    out = ""
    for _ in range(runs):
        start = time.perf_counter()
        out = fn(html)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), out


def pathological() -> list[tuple[str, str]]:
    mb = 1_000_000  # FRESHRAG_MAX_DOCUMENT_BYTES' default: no event is larger
    return [
        ("200k nested <div>", "<div>" * (mb // 5) + "x"),
        ("100k nested <ul><li>", "<ul><li>x" * (mb // 9)),
        ("110k misnested <b><i>", "<b><i>x" * (mb // 7)),
        ("90k nested <table><tr><td>", "<table><tr><td>x" * (mb // 16)),
        ("500 nested <div> + 1 MB of <div>", "<div>" * 500 + "<div>x</div>" * (mb // 12)),
        ("60k nested <h1>..<h6>", "".join(f"<h{i % 6 + 1}>x" for i in range(mb // 16))),
        ("flat 1 MB of paragraphs", "<p>some words here</p>" * (mb // 22)),
        ("1 MB in one <pre>", "<pre>" + "line of code\n" * (mb // 13) + "</pre>"),
        ("1 MB of one wide table", "<table><tr>" + "<td>c</td>" * (mb // 10) + "</tr></table>"),
    ]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    libs = converters()
    pages = sorted(p for p in PAGES.glob("*.html") if p.name in CONTENT_ROOT)
    print(f"{len(pages)} pages, {runs} runs each (median ms)\n")
    header = f"{'library':30} {'page':30} {'ms':>8} {'headings':>9} {'blocks':>9} {'junk':>6}"
    header += f" {'chars':>7}"
    print(header)
    print("-" * len(header))
    totals: dict[str, list[float]] = {}
    for page in pages:
        html = page.read_text(encoding="utf-8")
        headings, blocks, junk = truth(page.name, html)
        for lib, fn in libs.items():
            ms, out = measure(fn, html, runs)
            kh, kb, leaked = score(out, headings, blocks, junk)
            t = totals.setdefault(lib, [0, 0, 0, 0, 0, 0, 0])
            for i, v in enumerate((ms, kh, len(headings), kb, len(blocks), leaked, len(junk))):
                t[i] += v
            print(
                f"{lib:30} {page.stem[:30]:30} {ms:8.2f} {kh:>4}/{len(headings):<4} "
                f"{kb:>4}/{len(blocks):<4} {leaked:>2}/{len(junk):<3} {len(out):7}"
            )
    print("\ntotals over the pages:")
    for lib, t in totals.items():
        print(
            f"{lib:30} {t[0] / len(pages):7.2f} ms/page, headings {t[1]:.0f}/{t[2]:.0f}, "
            f"content blocks {t[3]:.0f}/{t[4]:.0f}, junk leaked {t[5]:.0f}/{t[6]:.0f}"
        )
    print("\n5,000 nested <div> (a deep but legal tree; freshrag refuses > 512):")
    deep = "<div>" * 5000 + "deep text"
    for lib, fn in libs.items():
        start = time.perf_counter()
        try:
            result = "ok" if "deep text" in fn(deep) else "text lost"
        except Exception as exc:
            result = f"{type(exc).__name__}"
        print(f"  {lib:30} {(time.perf_counter() - start) * 1000:8.0f} ms  {result}")
    print("\npathological inputs, freshrag's converter (1 MB each, the event size limit):")
    for name, html in pathological():
        start = time.perf_counter()
        try:
            out = f"out {len(html_to_markdown(html)):>9} chars"
        except FormatError as exc:
            out = f"refused: {exc.error_class}"
        ms = (time.perf_counter() - start) * 1000
        tracemalloc.start()  # a second run: tracing slows Python down several times
        with contextlib.suppress(FormatError):
            html_to_markdown(html)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  {name:32} {ms:8.0f} ms  {out:26} python peak {peak / 2**20:6.1f} MiB")


if __name__ == "__main__":
    main()
