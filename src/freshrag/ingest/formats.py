"""A document's declared `content_type` -> the text that is chunked, embedded and stored (pure).

- `text/markdown`, or no content type: the text unchanged (today's markdown-ish reading: ATX
  headings split sections, fenced code is kept whole).
- `text/plain`: unchanged, except that a line the chunker would read as a markdown heading
  (`# x`) or a code fence (```` ``` ````, `~~~`) gets a `\\` in front, so plain text is never
  split as if it were markdown.
- `text/html`: markdown-like text. Headings become `#`..`######` lines (so chunking by heading
  still works), paragraphs and blocks are separated by blank lines, list items start with `- `
  or `1. `, `<pre>` becomes a fenced block (a fence line inside it gets a `\\`), data tables
  become `| a | b |` rows, inline `<code>` keeps its backticks, links and emphasis keep their
  text; a paragraph line that would read as a heading or fence is escaped as in plain text.
  HTML nested deeper than `MAX_HTML_DEPTH` raises `HtmlTooDeep`. Dropped with everything in
  them: `script`, `style`, `noscript`, `template`, `head`, `nav`, `aside`, `form` and its
  controls, `iframe`/`object`/`embed`/`svg`/`canvas`, media; the page `header`/`footer` (one
  inside `article`/`main` is the article's own and is kept); ARIA landmarks of the same kind
  (`role=navigation|banner|contentinfo|complementary|search|menu|menubar|toolbar`); and hidden
  elements (`hidden`, `aria-hidden="true"`, `style="display:none"`/`visibility:hidden`).
  Entities are decoded. Parsing is the HTML5 algorithm of the Lexbor engine (selectolax), the
  walk over the tree is iterative, and list indentation is capped, so the output is never much
  larger than the input.

Content types are matched case-insensitively and parameters are ignored (`text/HTML;
charset=utf-8` is `text/html`: the event is JSON text, so its charset is already decoded).
Anything else raises `UnsupportedContentType`; all errors here are `FormatError`s, which carry
the `error_class` the flow writes in the dead letter's header.
"""

from __future__ import annotations

import re
from typing import Final

from selectolax.lexbor import LexborHTMLParser, LexborNode

from freshrag.ingest.chunking import FENCE, HEADING

MARKDOWN: Final = "text/markdown"
HTML: Final = "text/html"
PLAIN: Final = "text/plain"
SUPPORTED_CONTENT_TYPES: Final = (MARKDOWN, HTML, PLAIN)
DEFAULT_CONTENT_TYPE: Final = MARKDOWN
MAX_CONTENT_TYPE_CHARS: Final = 255
MAX_LIST_INDENT: Final = 8  # nesting levels that indent; deeper items stay at this depth
# HTML nested deeper than this is refused before parsing: an HTML5 parser checks the stack of
# open elements at each start tag, so its time grows with depth x tags (1 MB of nested <div>:
# minutes). Browsers cap the tree near this depth too (Blink: 512).
MAX_HTML_DEPTH: Final = 512


class FormatError(ValueError):
    """The text cannot be made indexable; `error_class` names the reason for the DLQ header."""

    error_class = "FormatError"


class UnsupportedContentType(FormatError):
    error_class = "UnsupportedContentType"


class InvalidText(FormatError):
    error_class = "InvalidUnicode"


class HtmlTooDeep(FormatError):
    error_class = "HtmlTooDeep"


def normalize_content_type(value: str | None) -> str:
    """The media type (`type/subtype`, lower case, parameters dropped) if freshrag reads it,
    `text/markdown` for None, else `UnsupportedContentType`."""
    if value is None:
        return DEFAULT_CONTENT_TYPE
    media = value.split(";", 1)[0].strip().lower()
    if media in SUPPORTED_CONTENT_TYPES:
        return media
    shown = value if len(value) <= 80 else value[:80] + "..."
    raise UnsupportedContentType(
        f"content_type {shown!r} is not supported; use one of {', '.join(SUPPORTED_CONTENT_TYPES)}"
        " (parameters such as '; charset=utf-8' are ignored)"
    )


def to_indexable_text(text: str, content_type: str | None) -> str:
    """The text to chunk and store for a document of `content_type` (see the module doc).

    May return "" (an HTML page of nothing but scripts); the caller decides what that means.
    Raises only `FormatError`: `UnsupportedContentType`, or `InvalidText` for a lone surrogate.
    """
    media = normalize_content_type(content_type)
    if media == MARKDOWN:
        return text
    if media == PLAIN:
        return escape_markup(text)
    return html_to_markdown(text)


# -- plain text --------------------------------------------------------------------------------

_LINE_BREAK = re.compile(r"(\r\n|\r|\n)")  # the line breaks `chunking.split_sections` reads
_FENCE_LINE = re.compile(r"^(?=[ \t\f\v]*(?:```|~~~))", re.MULTILINE)


def escape_markup(text: str) -> str:
    """Put a `\\` before each line that `chunking.split_sections` would read as a markdown
    heading or code fence (its own patterns, so the two cannot disagree)."""
    if "#" not in text and "`" not in text and "~" not in text:
        return text
    parts = _LINE_BREAK.split(text)
    for i in range(0, len(parts), 2):  # lines at even places, their breaks in between
        line = parts[i]
        if line and (HEADING.match(line) or FENCE.match(line)):
            parts[i] = "\\" + line
    return "".join(parts)


# -- HTML --------------------------------------------------------------------------------------

_DROP: Final = frozenset(
    {
        "script",
        "style",
        "noscript",
        "template",
        "head",
        "title",
        "meta",
        "link",
        "base",
        "nav",
        "aside",
        "form",
        "button",
        "input",
        "select",
        "option",
        "optgroup",
        "textarea",
        "datalist",
        "output",
        "iframe",
        "frame",
        "frameset",
        "object",
        "embed",
        "applet",
        "param",
        "svg",
        "canvas",
        "map",
        "audio",
        "video",
        "source",
        "track",
        "picture",
        "img",
        "dialog",
        "menu",
    }
)
_PAGE_CHROME: Final = frozenset({"header", "footer"})  # dropped outside article/main
_CONTENT_ROOTS: Final = frozenset({"article", "main"})
_DROP_ROLES: Final = frozenset(
    {
        "navigation",
        "banner",
        "contentinfo",
        "complementary",
        "search",
        "menu",
        "menubar",
        "toolbar",
    }
)
_HEADINGS: Final = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCKS: Final = frozenset(
    {
        "address",
        "article",
        "blockquote",
        "body",
        "caption",
        "center",
        "dd",
        "details",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "header",
        "hgroup",
        "hr",
        "html",
        "legend",
        "main",
        "p",
        "section",
        "summary",
    }
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_BLANKS = re.compile(r"[ \t\n\r\f\v\u00a0]+")
_PIPE = re.compile(r"\|")


def _hidden(node: LexborNode) -> bool:
    attrs = node.attributes
    if not attrs:
        return False
    if "hidden" in attrs:
        return True
    if (attrs.get("aria-hidden") or "").strip().lower() == "true":
        return True
    if (attrs.get("role") or "").strip().lower() in _DROP_ROLES:
        return True
    style = attrs.get("style")
    return bool(style and _HIDDEN_STYLE.search(style))


class _Writer:
    """Collects markdown lines while the tree is walked; inline text waits in `inline`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.inline: list[str] = []
        self.lists: list[list[int]] = []  # per open list: [ordered (0/1), next number]
        self.marker: str | None = None  # the pending list item's marker
        self.pre: list[str] | None = None  # raw text of the open <pre>
        self.pre_depth = 0
        self.cells: list[list[str]] | None = None  # the rows of the open (outermost) table
        self.cell_depth = 0  # > 0 inside a table cell: blocks become spaces
        self.table_depth = 0
        self.code_starts: list[int] = []  # where each open inline <code> began in `inline`

    # -- text --
    def text(self, data: str) -> None:
        if self.pre is not None:
            self.pre.append(data)
        else:  # source line breaks are blanks; only <br> breaks a line
            self.inline.append(_BLANKS.sub(" ", data))

    def line_break(self) -> None:
        if self.pre is not None:
            self.pre.append("\n")
        elif self.cell_depth:
            self.inline.append(" ")
        else:
            self.inline.append("\n")

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def _indent(self) -> str:
        return "  " * min(len(self.lists), MAX_LIST_INDENT)

    def flush(self) -> None:
        """End the current paragraph: write its lines (escaped), then a blank line."""
        if self.cell_depth:
            self.inline.append(" ")
            return
        if not self.inline:
            return
        raw = "".join(self.inline)
        self.inline.clear()
        lines = [_BLANKS.sub(" ", part).strip() for part in raw.split("\n")]
        lines = [escape_markup(line) for line in lines if line]
        if not lines:
            return
        if self.lists:
            indent = self._indent()
            first = self.marker if self.marker is not None else indent
            self.marker = None
            self.lines.append(first + lines[0])
            self.lines.extend(indent + line for line in lines[1:])
            return
        self.blank()
        self.lines.extend(lines)
        self.blank()

    # -- structure --
    def heading(self, level: int, text: str) -> None:
        # less a trailing permalink anchor: Sphinx's `¶`, Node's and many blogs' `#`
        title = _BLANKS.sub(" ", text).strip().rstrip("#¶§ ").strip()
        if not title:
            return
        self.blank()
        self.lines.append("#" * level + " " + title)
        self.blank()

    def open_list(self, ordered: bool) -> None:
        self.flush()
        if not self.lists:
            self.blank()
        self.lists.append([int(ordered), 1])

    def close_list(self) -> None:
        self.flush()
        self.lists.pop()
        self.marker = None
        if not self.lists:
            self.blank()

    def open_item(self) -> None:
        self.flush()
        if not self.lists:  # an <li> outside any list
            self.lists.append([0, 1])
        ordered, number = self.lists[-1]
        self.lists[-1][1] = number + 1
        indent = "  " * (min(len(self.lists), MAX_LIST_INDENT) - 1)
        self.marker = indent + (f"{number}. " if ordered else "- ")

    def close_pre(self) -> None:
        code = "".join(self.pre or []).strip("\n")
        self.pre = None
        if not code.strip():
            return
        # The chunker toggles on any fence line, so one inside the code gets a backslash.
        code = _FENCE_LINE.sub("\\\\", code)
        self.blank()
        self.lines.extend(["```", *code.split("\n"), "```"])
        self.blank()

    def close_table(self) -> None:
        rows = [r for r in self.cells or [] if any(c for c in r)]
        self.cells = None
        width = max((len(r) for r in rows), default=0)
        if len(rows) < 2 or width < 2:  # a layout table: its cells are paragraphs
            for row in rows:
                for cell in row:
                    if cell:
                        self.inline.append(cell)
                        self.flush()
            return
        self.blank()
        for i, row in enumerate(rows):  # rows are not padded: the output stays linear
            self.lines.append("| " + " | ".join(row) + " |")
            if i == 0:
                self.lines.append("|" + " --- |" * len(row))
        self.blank()

    def result(self) -> str:
        self.flush()
        while self.lines and self.lines[-1] == "":
            self.lines.pop()
        while self.lines and self.lines[0] == "":
            self.lines.pop(0)
        return "\n".join(self.lines)


_TAG = re.compile(r"<!--|<(/?)([A-Za-z][^\s/>]*)([^>]*)>")
_VOID: Final = frozenset(
    "area base br col embed hr img input link meta param source track wbr basefont bgsound "
    "frame keygen image".split()
)
_RAW_TEXT: Final = frozenset(
    "script style textarea title xmp iframe noembed noframes noscript plaintext".split()
)
_CLOSES_P: Final = frozenset(
    "address article aside blockquote center details dialog dir div dl fieldset figcaption "
    "figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr li dd dt listing main menu nav ol p "
    "pre section summary table ul xmp".split()
)
# A start tag that closes an open element of its family, unless a boundary comes first.
_FAMILY: Final = {
    "li": ({"li"}, {"ul", "ol", "menu", "table", "div", "td", "th"}),
    "dt": ({"dt", "dd"}, {"dl", "table", "div", "td", "th"}),
    "dd": ({"dt", "dd"}, {"dl", "table", "div", "td", "th"}),
    "td": ({"td", "th"}, {"tr", "table"}),
    "th": ({"td", "th"}, {"tr", "table"}),
    "tr": ({"tr", "td", "th"}, {"tbody", "thead", "tfoot", "table"}),
    "tbody": ({"tbody", "thead", "tfoot", "tr", "td", "th"}, {"table"}),
    "thead": ({"tbody", "thead", "tfoot", "tr", "td", "th"}, {"table"}),
    "tfoot": ({"tbody", "thead", "tfoot", "tr", "td", "th"}, {"table"}),
    "option": ({"option"}, {"select", "datalist", "optgroup"}),
    "optgroup": ({"option", "optgroup"}, {"select"}),
}
_P_BOUNDARY: Final = frozenset({"table", "td", "th", "caption", "button", "template", "object"})
_LOOKBACK = 16  # how far down the stack an implied close is looked for (keeps the scan linear)


def nesting_depth(html: str, limit: int = MAX_HTML_DEPTH) -> int:
    """An estimate of the element tree's depth, from a linear scan of the tags; stops early
    once past `limit`. It follows the implied end tags of HTML (`<p>`, `<li>`, table cells,
    headings...) and skips comments and raw text (script, style...), so well-formed and
    tag-soup pages alike score their real depth; a crafted page may be over-estimated, never
    by enough to matter below the limit."""
    stack: list[str] = []
    open_count: dict[str, int] = {}
    pos = 0
    deepest = 0

    def pop_to(name: str) -> None:
        while stack:
            top = stack.pop()
            open_count[top] -= 1
            if top == name:
                return

    def close_nearest(
        names: set[str] | frozenset[str], boundary: set[str] | frozenset[str]
    ) -> None:
        for top in reversed(stack[-_LOOKBACK:]):
            if top in names:
                pop_to(top)
                return
            if top in boundary:
                return

    while True:
        match = _TAG.search(html, pos)
        if match is None:
            return deepest
        pos = match.end()
        if match.group(0) == "<!--":
            end = html.find("-->", pos)
            if end < 0:
                return deepest
            pos = end + 3
            continue
        name = match.group(2).lower()
        if match.group(1):  # an end tag
            if open_count.get(name):
                pop_to(name)
            continue
        if name in _VOID or match.group(3).endswith("/"):
            continue
        if name in _RAW_TEXT:
            if name == "plaintext":
                return max(deepest, len(stack) + 1)
            end_tag = re.compile(f"</{name}[\\s/>]", re.IGNORECASE).search(html, pos)
            if end_tag is None:
                return max(deepest, len(stack) + 1)
            pos = end_tag.end()
            continue
        if name in _CLOSES_P and open_count.get("p"):
            close_nearest({"p"}, _P_BOUNDARY)
        if name in _HEADINGS and stack and stack[-1] in _HEADINGS:
            pop_to(stack[-1])
        family = _FAMILY.get(name)
        if family is not None:
            close_nearest(*family)
        stack.append(name)
        open_count[name] = open_count.get(name, 0) + 1
        if len(stack) > deepest:
            deepest = len(stack)
            if deepest > limit:
                return deepest


def html_to_markdown(html: str) -> str:
    """Markdown-like text of an HTML document or fragment (see the module doc); `HtmlTooDeep`
    when its elements nest deeper than `MAX_HTML_DEPTH`."""
    try:
        html.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidText(
            f"text holds a lone surrogate {html[exc.start]!a} at char {exc.start}"
        ) from None
    depth = nesting_depth(html)
    if depth > MAX_HTML_DEPTH:
        raise HtmlTooDeep(
            f"HTML elements nest more than {MAX_HTML_DEPTH} deep; parsing it would take time "
            "that grows with depth x size (browsers cap the tree near this depth too)"
        )
    tree = LexborHTMLParser(html)
    root = tree.root
    if root is None:
        return ""
    out = _Writer()
    # An explicit stack of (node, entering) instead of recursion: no depth limit.
    stack: list[tuple[LexborNode, bool]] = [(root, True)]
    content_depth = 0
    heading_text: list[str] | None = None
    heading_level = 0
    heading_depth = 0
    while stack:
        node, entering = stack.pop()
        tag = node.tag or ""
        if not entering:
            content_depth -= tag in _CONTENT_ROOTS
            if tag in _HEADINGS and heading_depth:
                heading_depth -= 1
                if heading_depth == 0 and heading_text is not None:
                    text = "".join(heading_text)
                    heading_text = None
                    if out.cell_depth or out.pre is not None:
                        out.text(f" {text} ")
                    else:
                        out.heading(heading_level, text)
            elif tag == "pre":
                out.pre_depth -= 1
                if out.pre_depth == 0:
                    if out.cell_depth:
                        code = "".join(out.pre or [])
                        out.pre = None
                        out.text(code)
                    else:
                        out.close_pre()
            elif tag in ("td", "th"):
                out.cell_depth -= 1
                if out.cell_depth == 0 and out.cells is not None:
                    raw = "".join(out.inline)
                    out.inline.clear()
                    cell = _PIPE.sub("\\|", _BLANKS.sub(" ", raw).strip())
                    if not out.cells:
                        out.cells.append([])
                    out.cells[-1].append(cell)
            elif tag == "table":
                out.table_depth -= 1
                if out.table_depth == 0:
                    out.close_table()
            elif tag in ("ul", "ol"):
                if out.cell_depth:
                    out.inline.append(" ")
                else:
                    out.close_list()
            elif tag == "li" or tag in _BLOCKS or tag == "tr":
                if tag == "tr" and out.cell_depth == 0:
                    continue
                out.flush()
            elif tag == "code" and out.pre is None and out.code_starts:
                start = out.code_starts.pop()
                if "".join(out.inline[start + 1 :]).strip():
                    out.inline.append("`")
                else:  # an empty <code>: no stray backticks
                    del out.inline[start:]
            continue
        if tag == "-text":
            data = node.text_content or ""
            if heading_text is not None:
                heading_text.append(data)
            else:
                out.text(data)
            continue
        if tag.startswith("-"):  # a comment, a doctype, a processing instruction
            continue
        if tag in _DROP or _hidden(node):
            continue
        if tag in _PAGE_CHROME and content_depth == 0:
            continue
        content_depth += tag in _CONTENT_ROOTS
        if tag == "br":
            if heading_text is not None:
                heading_text.append(" ")
            else:
                out.line_break()
        elif tag in _HEADINGS:
            heading_depth += 1
            if heading_depth == 1:
                out.flush()
                heading_text = []
                heading_level = _HEADINGS[tag]
        elif tag == "pre":
            out.pre_depth += 1
            if out.pre_depth == 1:
                if not out.cell_depth:
                    out.flush()
                out.pre = []
        elif tag == "table":
            out.table_depth += 1
            if out.table_depth == 1:
                out.flush()
                out.cells = []
        elif tag == "tr":
            if out.cell_depth == 0 and out.cells is not None:
                out.cells.append([])
            elif out.cell_depth:
                out.inline.append(" ")
        elif tag in ("td", "th"):
            if out.cell_depth == 0 and out.cells is not None:
                out.flush()
            out.cell_depth += 1
            if out.cell_depth > 1:
                out.inline.append(" ")
        elif tag in ("ul", "ol"):
            if out.cell_depth:
                out.inline.append(" ")
            else:
                out.open_list(tag == "ol")
        elif tag == "li":
            if out.cell_depth:
                out.inline.append(" ")
            else:
                out.open_item()
        elif tag in _BLOCKS:
            out.flush()
        elif tag == "code" and out.pre is None and heading_text is None:
            out.code_starts.append(len(out.inline))
            out.inline.append("`")
        stack.append((node, False))
        children: list[LexborNode] = []
        child = node.first_child
        while child is not None:
            children.append(child)
            child = child.next
        stack.extend((c, True) for c in reversed(children))
    return out.result()
