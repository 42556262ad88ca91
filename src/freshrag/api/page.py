"""GET /: the single-page web UI, served with a strict Content-Security-Policy.

The page keeps its one script and one stylesheet inline; the policy allows exactly those by
their SHA-256 hashes (computed from the file at start-up), so any other inline script, event
handler attribute or style that a hostile document might smuggle into the DOM does not run.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

PAGE = Path(__file__).parent / "web" / "index.html"
router = APIRouter(include_in_schema=False)
NONE = "'none'"


def _hashes(tag: str, html: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks
    )


def content_security_policy(html: str) -> str:
    """Only the page's own inline script and style (by hash); fetches to this origin only."""
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {_hashes('script', html) or NONE}",
            f"style-src {_hashes('style', html) or NONE}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


@cache
def _page(path: Path) -> tuple[str, str]:
    html = path.read_text(encoding="utf-8")
    return html, content_security_policy(html)


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@router.get("/")
async def index() -> Response:
    if not PAGE.exists():
        return JSONResponse({"service": "freshrag", "docs": "/docs"})
    html, csp = _page(PAGE)
    return Response(
        html,
        media_type="text/html",
        headers={"Content-Security-Policy": csp, **SECURITY_HEADERS},
    )
