"""The web page's headers and markup: a CSP that allows only the page's own inline script and
style (by hash), and nothing in the markup that such a policy would block. The browser side
(a hostile document rendered inert) is tests/integration/test_up.py."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

from fastapi.testclient import TestClient

from freshrag.api.app import create_app
from freshrag.api.page import PAGE, content_security_policy
from freshrag.core.settings import load_settings


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def directives(csp: str) -> dict[str, list[str]]:
    out = {}
    for part in csp.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


def test_page_is_served_with_a_hash_based_content_security_policy() -> None:
    client = TestClient(create_app(load_settings(api_keys={"k-0123456789abcdef": "acme"})))
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    csp = directives(r.headers["content-security-policy"])
    (script,) = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    (style,) = re.findall(r"<style>(.*?)</style>", html, flags=re.S)
    assert csp["script-src"] == [sha256(script)]
    assert csp["style-src"] == [sha256(style)]
    assert csp["default-src"] == ["'none'"] and csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert "'unsafe-inline'" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


def test_policy_follows_the_page_and_blocks_everything_else() -> None:
    csp = directives(content_security_policy("<p>no script here</p>"))
    assert csp["script-src"] == ["'none'"] and csp["style-src"] == ["'none'"]
    csp = directives(content_security_policy("<script>a()</script><script>b()</script>"))
    assert csp["script-src"] == [sha256("a()"), sha256("b()")]


class Attributes(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen += [(tag, name) for name, _ in attrs]


def test_markup_has_no_inline_handlers_styles_or_external_scripts() -> None:
    parser = Attributes()
    parser.feed(PAGE.read_text(encoding="utf-8"))
    names = {name for _, name in parser.seen}
    assert not {n for n in names if n.startswith("on")}, "inline event handlers need unsafe-inline"
    assert "style" not in names, "style attributes need unsafe-inline"
    assert ("script", "src") not in parser.seen
