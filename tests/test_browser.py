"""The page in a real browser: Debian's Chromium (/usr/bin/chromium), headless, driven by
Playwright's sync API, against the API and the worker running as processes.

No browser is ever downloaded (never `playwright install`): the tests use the system Chromium.
Where /usr/bin/chromium is missing they are skipped, so a developer without it still runs the
rest of the suite; but with CI=true (as `.ci/run` sets, after installing chromium) they fail
instead, so CI can never pass without having run them.

Screenshots are saved under test-artifacts/ at the project root (gitignored).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
SAMPLE = ROOT / "examples" / "sample.jsonl"
SAMPLE_LINES, SAMPLE_VALID, SAMPLE_INVALID = 300, 280, 16
# What the worker finds wrong in examples/sample.jsonl, in line order.
SAMPLE_INVALID_LINES = [4, 31, 54, 87, 94, 99, 107, 116, 150, 151, 165, 171, 175, 184, 201, 280]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found: apt-get install chromium (Debian's package)"
        if in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def console_errors() -> list[str]:
    """The page's uncaught exceptions and console errors; a test removes those it expects."""
    return []


@pytest.fixture
def page(browser, console_errors):
    """A fresh page (own context); the test fails if the page logs an error it did not expect."""
    # Reduced motion: the page then draws progress bars without a transition, so a
    # screenshot shows the final width.
    context = browser.new_context(viewport={"width": 900, "height": 900},
                                  reduced_motion="reduce")
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda exc: console_errors.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: console_errors.append(
        f"{msg.text} ({msg.location.get('url')})") if msg.type == "error" else None)
    yield page
    context.close()
    assert not console_errors, console_errors


@pytest.fixture
def api_url(settings, start_process) -> str:
    """The API served by `python eventhorizon.py` on the test's port, once it answers."""
    url, _proc = serve_api(settings, start_process)
    return url


def serve_api(settings, start_process, **env: str):
    """Start `python eventhorizon.py`; (its URL, its process) once it answers /healthz."""
    proc = start_process("eventhorizon.py", **env)
    url = f"http://127.0.0.1:{settings.http_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return url, proc
        except (urllib.error.URLError, ConnectionError):
            pass
        if proc.poll() is not None:
            pytest.fail(f"eventhorizon.py exited with {proc.returncode}: "
                        f"{proc.log_path.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail("eventhorizon.py did not answer /healthz within 30 s")
        time.sleep(0.1)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=path, full_page=True)
    return path


def test_sample_upload_completes_in_the_page(page, api_url, start_process):
    start_process("worker.py")
    page.goto(f"{api_url}/")
    expect(page.locator("#jobs")).to_have_text("No jobs yet.")  # recent jobs loaded
    expect(page.locator("#send")).to_be_disabled()

    page.set_input_files("#file", SAMPLE)
    expect(page.locator("#drop-text")).to_contain_text("sample.jsonl")
    page.click("#send")

    card = page.locator("#jobs article.job")
    expect(card).to_have_count(1)
    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(card.locator(".name")).to_have_text("sample.jsonl")
    expect(card.locator(".status")).to_have_text("completed")
    expect(card.locator(".lines")).to_have_text(f"{SAMPLE_LINES} / {SAMPLE_LINES}")
    expect(card.locator(".valid")).to_have_text(str(SAMPLE_VALID))
    expect(card.locator(".invalid")).to_have_text(str(SAMPLE_INVALID))
    expect(card.locator(".error")).to_have_text("")
    expect(page.locator("#message")).to_have_text("Uploaded sample.jsonl.")
    expect(card.locator(".bar > div")).to_have_attribute("style", "width: 100%;")

    errors = card.locator("details.errors")
    expect(errors).to_be_visible()
    errors.locator("summary").click()
    rows = errors.locator("tbody tr")
    expect(rows).to_have_count(SAMPLE_INVALID)  # all 16 fit the page's first 20: no "more" row
    expect(rows.locator("td:first-child")).to_have_text([str(n) for n in SAMPLE_INVALID_LINES])

    # The table shows what the API says, reason for reason.
    job_id = card.get_attribute("data-job-id")
    api_errors = get_json(f"{api_url}/api/v1/jobs/{job_id}/errors")
    assert [e["line_no"] for e in api_errors["errors"]] == SAMPLE_INVALID_LINES
    expect(rows.locator("td:last-child")).to_have_text([e["reason"] for e in api_errors["errors"]])

    path = screenshot(page, "browser-completed.png")
    assert path.stat().st_size > 0

    # A reload shows the finished job from the recent-jobs list, table included.
    page.reload()
    expect(card).to_have_attribute("data-status", "completed")
    expect(card.locator(".lines")).to_have_text(f"{SAMPLE_LINES} / {SAMPLE_LINES}")
    expect(card.locator("details.errors tbody tr")).to_have_count(SAMPLE_INVALID)


def test_refused_upload_shows_the_problem_detail(page, api_url, tmp_path, console_errors):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a log file\n")
    page.goto(f"{api_url}/")
    expect(page.locator("#jobs")).to_have_text("No jobs yet.")

    page.set_input_files("#file", notes)
    page.click("#send")

    message = page.locator("#message")
    expect(message).to_have_text("Upload refused: only .jsonl files are accepted, got 'notes.txt'")
    expect(message).to_have_class("error")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#transfer")).to_be_hidden()
    expect(page.locator("#jobs article.job")).to_have_count(0)
    screenshot(page, "browser-refused.png")

    page.set_input_files("#file", [])  # clearing the choice brings the prompt back
    expect(page.locator("#drop-text")).to_have_text("Drop a .jsonl file here, or click to pick one")
    expect(page.locator("#send")).to_be_disabled()
    expect(message).to_have_text("")
    # Chromium logs every 4xx response; this one is the point of the test.
    refused = [e for e in console_errors if "status of 415" in e]
    assert len(refused) == 1, console_errors
    console_errors.remove(refused[0])


def test_a_file_over_the_limit_is_refused_with_the_limit_shown(page, settings, start_process,
                                                                tmp_path, console_errors):
    url, _proc = serve_api(settings, start_process, EH_MAX_UPLOAD_BYTES=str(1024 * 1024))
    big = tmp_path / "big.jsonl"
    line = json.dumps({"timestamp": "2026-11-23T10:00:00Z", "level": "info", "service": "s",
                       "event_type": "e", "message": "x" * 200}) + "\n"
    big.write_text(line * (3 * 1024 * 1024 // len(line)))
    page.goto(f"{url}/")
    page.set_input_files("#file", big)
    page.click("#send")

    message = page.locator("#message")
    expect(message).to_contain_text("Upload refused:")
    expect(message).to_contain_text("1 MiB")
    expect(message).to_have_class("error")
    expect(page.locator("#jobs article.job")).to_have_count(0)
    refused = [e for e in console_errors if "status of 413" in e]
    assert len(refused) == 1, console_errors
    console_errors.remove(refused[0])


def test_long_names_and_reasons_fit_a_narrow_screen(page, api_url, start_process, tmp_path):
    """A file name and a reason with no spaces wrap instead of widening a phone-sized page."""
    start_process("worker.py")
    long_file = tmp_path / f"{'checkout_service_' * 8}2026-11-23.jsonl"
    entry = {"timestamp": "2026-11-23T10:00:00Z", "level": "info", "service": "checkout",
             "event_type": "order.created", "message": "order created"}
    long_file.write_text(f"{json.dumps(entry)}\n{json.dumps({**entry, 'level': 'x' * 300})}\n")
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(f"{api_url}/")
    page.set_input_files("#file", long_file)
    page.click("#send")

    card = page.locator("#jobs article.job")
    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(card.locator(".invalid")).to_have_text("1")
    card.locator("details.errors summary").click()
    expect(card.locator("details.errors tbody tr td:last-child")).to_contain_text("x" * 100)
    screenshot(page, "browser-narrow.png")
    scroll_width, client_width = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert scroll_width <= client_width, "the page scrolls sideways"


def test_the_job_card_follows_the_job_across_an_api_restart(page, settings, start_process,
                                                          console_errors):
    """The API restarts while a job runs: the page's WebSocket drops (1001), the page
    reconnects to the new API process, is sent the current state, and the card still ends
    `completed` with the right counts."""
    url, api = serve_api(settings, start_process)
    start_process("worker.py", EH_LINE_DELAY_MAX_S="0.04", EH_BATCH_LINES="20")  # ~6 s a file
    page.goto(f"{url}/")
    page.set_input_files("#file", SAMPLE)
    page.click("#send")
    card = page.locator("#jobs article.job")
    expect(card).to_have_attribute("data-status", "processing", timeout=30_000)

    api.terminate()
    assert api.wait(timeout=10) == 0
    serve_api(settings, start_process)  # the same port

    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(card.locator(".lines")).to_have_text(f"{SAMPLE_LINES} / {SAMPLE_LINES}")
    expect(card.locator(".valid")).to_have_text(str(SAMPLE_VALID))
    expect(card.locator(".invalid")).to_have_text(str(SAMPLE_INVALID))
    expect(card.locator("details.errors tbody tr")).to_have_count(SAMPLE_INVALID)
    # While the API was away, Chromium logged each request that found nobody listening; those
    # are the point of the test. Anything else (an uncaught error, say) still fails it.
    console_errors[:] = [e for e in console_errors
                         if "ERR_CONNECTION_REFUSED" not in e and "WebSocket connection" not in e]
