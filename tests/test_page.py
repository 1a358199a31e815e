"""The page's security headers, through aiohttp's test client; and the page's HTML, which
must keep to what that Content-Security-Policy allows (the browser tests check it at run time)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

import eventhorizon
import http_guard
from helpers import ROOT, bearer

EXPECTED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@pytest.fixture
async def anonymous(settings, aiohttp_client):
    """The API, for a client without a token (as the page is before it has one)."""
    return await aiohttp_client(eventhorizon.init_app(settings))


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for directive in filter(None, (d.strip() for d in header.split(";"))):
        name, *sources = directive.split()
        directives[name] = sources
    return directives


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/static/app.js",
        "/static/explore.js",
        "/static/style.css",
        "/docs",
        "/static/docs.js",
        "/static/docs.css",
        "/api/v1/openapi.json",
    ],
)
async def test_the_page_its_assets_and_the_docs_carry_the_security_headers(anonymous, path):
    response = await anonymous.get(path)
    assert response.status == 200
    for name, value in EXPECTED_HEADERS.items():
        assert response.headers.get(name) == value, name
    csp = csp_directives(response.headers["Content-Security-Policy"])
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]  # no inline script, no inline handlers, no eval
    assert csp["style-src"] == ["'self'"]  # no <style> and no style="…" from HTML
    assert csp["connect-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    assert csp["form-action"] == ["'self'"]


async def test_problem_answers_carry_the_security_headers(
    anonymous, make_token, settings, aiohttp_client
):
    missing = await anonymous.get("/static/nothing-here.js")
    refused = await anonymous.get("/api/v1/jobs")
    client = await aiohttp_client(eventhorizon.init_app(settings), headers=bearer(make_token()))
    unknown = await client.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000")
    for response, status in [(missing, 404), (refused, 401), (unknown, 404)]:
        assert response.status == status
        assert response.content_type == "application/problem+json"
        assert "Content-Security-Policy" in response.headers
        assert response.headers["X-Frame-Options"] == "DENY"


async def test_the_websocket_still_opens_with_the_headers_middleware(
    settings, aiohttp_client, make_token
):
    token = make_token()
    client = await aiohttp_client(eventhorizon.init_app(settings))
    async with client.ws_connect(
        "/ws/jobs/00000000-0000-0000-0000-000000000000",
        protocols=(http_guard.WS_AUTH_PROTOCOL, token),
    ) as ws:
        assert ws.protocol == http_guard.WS_AUTH_PROTOCOL
        await ws.receive(timeout=5)
        assert ws.close_code == 4404


class InlineCodeFinder(HTMLParser):
    """Collects what a `script-src 'self'; style-src 'self'` policy would block in a page."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = {name.lower() for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style> element")
        if "style" in names:
            self.found.append(f"style attribute on <{tag}>")
        self.found.extend(f"{name} handler on <{tag}>" for name in names if name.startswith("on"))
        href = dict(attrs).get("href") or ""
        if href.lower().startswith("javascript:"):
            self.found.append(f"javascript: URL on <{tag}>")


@pytest.mark.parametrize("name", ["index.html", "docs.html"])
def test_the_html_has_no_inline_script_style_or_handlers(name):
    finder = InlineCodeFinder()
    finder.feed((ROOT / "static" / name).read_text())
    assert finder.found == []
