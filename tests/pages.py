"""The page in Debian's Chromium (tests/test_browser*.py): the browser's arguments, signing
in, console errors a test expects, screenshots."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, expect

from helpers import ROOT, bearer

CHROMIUM = Path("/usr/bin/chromium")


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


ARTIFACTS = ROOT / "test-artifacts"


# Chromium logs most CSP violations as console errors itself; this makes sure of every one,
# whatever the kind (an init script is not subject to the page's policy).
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => console.error(
  `CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline code"}`));
"""


def get_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers=bearer(token))
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def sign_in(page: Page, url: str, token: str) -> None:
    """Open the page and give it a token through its form, as a user would."""
    page.goto(f"{url}/")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#upload")).to_be_hidden()
    enter_token(page, token)
    expect(page.locator("#token-form")).to_be_hidden()
    expect(page.locator("#upload")).to_be_visible()


def enter_token(page: Page, token: str) -> None:
    page.fill("#token", token)
    page.click("#use-token")


def expected_errors(console_errors: list[str], text: str, count: int = 1) -> None:
    """Take out of console_errors the ones the test caused on purpose (Chromium logs every 4xx
    response); anything else still fails the test."""
    found = [e for e in console_errors if text in e]
    assert len(found) == count, console_errors
    for error in found:
        console_errors.remove(error)


def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    # An artifact for people, not a check: a busy machine may take its time rendering it.
    page.screenshot(path=path, full_page=full_page, timeout=60_000)
    return path
