"""The page in a real browser: Debian's Chromium (/usr/bin/chromium), headless, driven by
Playwright's sync API, against the API and the worker running as processes.

No browser is ever downloaded (never `playwright install`): the tests use the system Chromium.
Where /usr/bin/chromium is missing they are skipped, so a developer without it still runs the
rest of the suite; but with CI=true (as `.ci/run` sets, after installing chromium) they fail
instead, so CI can never pass without having run them.

The page is given its token as a user would, through its form. The pages are served with the
API's Content-Security-Policy, and a violation of it is a console error: it fails the test.

Screenshots are saved under test-artifacts/ at the project root (gitignored).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode, urlsplit

import psycopg
from playwright.sync_api import Page, expect

import core
from helpers import MYAPP, MYAPP_LINE, ROOT, bearer, wait_for
from pages import enter_token, expected_errors, get_json, screenshot, sign_in
from processes import serve_api, start_ready_relay

SAMPLE = ROOT / "examples" / "sample.jsonl"
SAMPLE_LINES, SAMPLE_VALID, SAMPLE_INVALID = 300, 280, 16
# What the worker finds wrong in examples/sample.jsonl, in line order.
SAMPLE_INVALID_LINES = [4, 31, 54, 87, 94, 99, 107, 116, 150, 151, 165, 171, 175, 184, 201, 280]


def get_status(url: str, token: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=bearer(token)), timeout=5):
            return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def upload_the_sample_to_completion(page: Page, url: str, token: str):
    """Sign in, upload examples/sample.jsonl through the page, wait for its card to complete."""
    sign_in(page, url, token)
    page.set_input_files("#file", SAMPLE)
    page.click("#send")
    card = page.locator("#jobs article.job")
    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    return card


def test_sample_upload_completes_in_the_page(page, api_url, start_process, make_token):
    start_process("worker.py")
    token = make_token("alice")
    sign_in(page, api_url, token)
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
    api_errors = get_json(f"{api_url}/api/v1/jobs/{job_id}/errors", token)
    assert [e["line_no"] for e in api_errors["errors"]] == SAMPLE_INVALID_LINES
    expect(rows.locator("td:last-child")).to_have_text([e["reason"] for e in api_errors["errors"]])

    path = screenshot(page, "browser-completed.png")
    assert path.stat().st_size > 0

    # A reload keeps the tab's token and shows the finished job from the recent-jobs list,
    # table included.
    page.reload()
    expect(page.locator("#token-form")).to_be_hidden()
    expect(card).to_have_attribute("data-status", "completed")
    expect(card.locator(".lines")).to_have_text(f"{SAMPLE_LINES} / {SAMPLE_LINES}")
    expect(card.locator("details.errors tbody tr")).to_have_count(SAMPLE_INVALID)


def test_refused_upload_shows_the_problem_detail(
    page, api_url, tmp_path, console_errors, make_token
):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a log file\n")
    sign_in(page, api_url, make_token())
    expect(page.locator("#jobs")).to_have_text("No jobs yet.")

    page.set_input_files("#file", notes)
    page.click("#send")

    message = page.locator("#message")
    expect(message).to_have_text(
        "Upload refused: accepted file names end in .jsonl, .ndjson, .json (JSON lines) or .log, "
        "optionally rotated (app.log.1) and compressed (.gz, .zst); got 'notes.txt'"
    )
    expect(message).to_have_class("error")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#transfer")).to_be_hidden()
    expect(page.locator("#jobs article.job")).to_have_count(0)
    screenshot(page, "browser-refused.png")

    page.set_input_files("#file", [])  # clearing the choice brings the prompt back
    expect(page.locator("#drop-text")).to_have_text(
        "Drop a log file here (.jsonl, .ndjson, .json, .log, also .gz / .zst), or click to pick one"
    )
    expect(page.locator("#send")).to_be_disabled()
    expect(message).to_have_text("")
    expected_errors(console_errors, "status of 415")  # the point of the test


def test_a_file_over_the_limit_is_refused_with_the_limit_shown(
    page, settings, start_process, tmp_path, console_errors, make_token
):
    url, _proc = serve_api(start_process, EH_MAX_UPLOAD_BYTES=str(1024 * 1024))
    big = tmp_path / "big.jsonl"
    line = (
        json.dumps(
            {
                "timestamp": "2026-11-23T10:00:00Z",
                "level": "info",
                "service": "s",
                "event_type": "e",
                "message": "x" * 200,
            }
        )
        + "\n"
    )
    big.write_text(line * (3 * 1024 * 1024 // len(line)))
    sign_in(page, url, make_token())
    page.set_input_files("#file", big)
    page.click("#send")

    message = page.locator("#message")
    expect(message).to_contain_text("Upload refused:")
    expect(message).to_contain_text("1 MiB")
    expect(message).to_have_class("error")
    expect(page.locator("#jobs article.job")).to_have_count(0)
    expected_errors(console_errors, "status of 413")


def test_long_names_and_reasons_fit_a_narrow_screen(
    page, api_url, start_process, tmp_path, make_token
):
    """A file name and a reason with no spaces wrap instead of widening a phone-sized page."""
    start_process("worker.py")
    start_ready_relay(start_process)
    long_file = tmp_path / f"{'checkout_service_' * 8}2026-11-23.jsonl"
    entry = {
        "timestamp": "2026-11-23T10:00:00Z",
        "level": "info",
        "service": "checkout",
        "event_type": "order.created",
        "message": "order created",
    }
    long_file.write_text(f"{json.dumps(entry)}\n{json.dumps({**entry, 'level': 'x' * 300})}\n")
    page.set_viewport_size({"width": 390, "height": 800})
    sign_in(page, api_url, make_token())
    page.set_input_files("#file", long_file)
    page.click("#send")

    card = page.locator("#jobs article.job")
    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(card.locator(".invalid")).to_have_text("1")
    card.locator("details.errors summary").click()
    expect(card.locator("details.errors tbody tr td:last-child")).to_contain_text("x" * 100)
    card.locator(".events").click()  # and so does the explore view, chart, filters and table
    expect(page.locator("#chart svg")).to_have_attribute("data-events", "1", timeout=60_000)
    card.locator(".delete").click()  # the confirm step fits too
    expect(card.locator(".confirm")).to_be_visible()
    screenshot(page, "browser-narrow.png")
    scroll_width, client_width = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll_width <= client_width, "the page scrolls sideways"


def test_the_job_card_follows_the_job_across_an_api_restart(
    page, settings, start_process, console_errors, make_token
):
    """The API restarts while a job runs: the page's WebSocket drops (1001), the page
    reconnects to the new API process, is sent the current state, and the card still ends
    `completed` with the right counts."""
    url, api = serve_api(start_process)
    start_process("worker.py", EH_LINE_DELAY_MAX_S="0.04", EH_BATCH_LINES="20")  # ~6 s a file
    sign_in(page, url, make_token())
    page.set_input_files("#file", SAMPLE)
    page.click("#send")
    card = page.locator("#jobs article.job")
    expect(card).to_have_attribute("data-status", "processing", timeout=30_000)

    api.terminate()
    assert api.wait(timeout=10) == 0
    serve_api(start_process, port=urlsplit(url).port)  # the same port

    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(card.locator(".lines")).to_have_text(f"{SAMPLE_LINES} / {SAMPLE_LINES}")
    expect(card.locator(".valid")).to_have_text(str(SAMPLE_VALID))
    expect(card.locator(".invalid")).to_have_text(str(SAMPLE_INVALID))
    expect(card.locator("details.errors tbody tr")).to_have_count(SAMPLE_INVALID)
    # While the API was away, Chromium logged each request that found nobody listening; those
    # are the point of the test. Anything else (an uncaught error, say) still fails it.
    console_errors[:] = [
        e
        for e in console_errors
        if "ERR_CONNECTION_REFUSED" not in e and "WebSocket connection" not in e
    ]
    expect(page.locator("#token-form")).to_be_hidden()  # the token still works: not asked again


# --------------------------------------------------------------------------- the token


def test_a_wrong_token_is_refused_and_the_page_asks_again(
    page, api_url, make_token, database_url, console_errors
):
    page.goto(f"{api_url}/")
    form, problem = page.locator("#token-form"), page.locator("#token-message")
    expect(form).to_be_visible()
    expect(page.locator("#token")).to_have_attribute("type", "password")
    expect(page.locator("#token")).to_be_focused()
    expect(problem).to_be_hidden()
    expect(form).to_contain_text("var/dev-token")  # where scripts/dev left the token
    screenshot(page, "browser-token-form.png")

    enter_token(page, "not a token")  # a space cannot go in a header: refused on the page
    expect(problem).to_have_text("That is not a token: a token is one word, like eh_12_…")

    enter_token(page, "eh_999_" + "A" * 43)  # well-formed, unknown: the API says 401
    expect(problem).to_have_text(
        "The token did not work (the token is malformed, unknown or revoked). Enter another one."
    )
    expect(form).to_be_visible()
    expect(page.locator("#token")).to_have_value("")
    expect(page.locator("#upload")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    screenshot(page, "browser-token-refused.png")
    expected_errors(console_errors, "status of 401")

    # A working token; then it is revoked, and the next request brings the form back.
    token = make_token("alice")
    enter_token(page, token)
    expect(page.locator("#jobs")).to_have_text("No jobs yet.")
    # The formats load after the jobs: revoked before that, their 401 would bring the form back.
    expect(page.locator("#format optgroup[label='Built in']")).to_have_count(1)
    expect(problem).to_be_hidden()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE api_tokens SET revoked_at = now()")
    page.set_input_files("#file", SAMPLE)
    page.click("#send")
    expect(problem).to_contain_text("The token did not work")
    expect(form).to_be_visible()
    expect(page.locator("#upload")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0
    expected_errors(console_errors, "status of 401")


def test_the_token_stays_in_the_tab_and_out_of_urls_cookies_and_local_storage(
    page, api_url, start_process, make_token
):
    start_process("worker.py")
    requests, socket_urls = [], []
    page.on("request", lambda request: requests.append(request))
    page.on("websocket", lambda ws: socket_urls.append(ws.url))
    token = make_token("alice")
    card = upload_the_sample_to_completion(page, api_url, token)
    expect(card.locator("details.errors tbody tr")).to_have_count(SAMPLE_INVALID)

    urls = [r.url for r in requests] + socket_urls
    assert any("/ws/jobs/" in u for u in socket_urls), "the card followed its job live"
    assert not [u for u in urls if token in u]
    api_requests = [r for r in requests if "/api/v1/" in r.url]
    assert {r.method for r in api_requests} == {"GET", "POST"}
    for request in api_requests:
        assert request.all_headers().get("authorization") == f"Bearer {token}", request.url
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("Object.values(localStorage)") == []
    assert page.evaluate("Object.values(sessionStorage)") == [token]
    assert token not in page.url

    # "Forget token": gone from the tab, and the page shows nothing of the last owner's.
    page.click("#forget")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#forget")).to_be_hidden()
    expect(page.locator("#upload")).to_be_hidden()
    expect(card).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.locator("#token-form")).to_be_visible()


def test_a_job_alice_uploaded_is_not_on_bobs_page(open_page, api_url, make_token, tmp_path):
    alice, bob = open_page(), open_page()  # two contexts: two browsers' sessionStorage
    sign_in(alice, api_url, make_token("alice"))
    sign_in(bob, api_url, make_token("bob"))
    alice.set_input_files("#file", SAMPLE)
    alice.click("#send")
    expect(alice.locator("#jobs article.job .name")).to_have_text(["sample.jsonl"])
    bobs_file = tmp_path / "bob.jsonl"
    bobs_file.write_text(SAMPLE.read_text().splitlines()[0] + "\n")
    bob.set_input_files("#file", bobs_file)
    bob.click("#send")
    expect(bob.locator("#jobs article.job .name")).to_have_text(["bob.jsonl"])

    # Each page's recent-jobs list, loaded afresh, holds its owner's job only.
    for page, name in [(alice, "sample.jsonl"), (bob, "bob.jsonl")]:
        page.reload()
        expect(page.locator("#jobs article.job .name")).to_have_text([name])
    screenshot(bob, "browser-bob.png")


def test_an_upload_in_a_format_of_ones_own(page, api_url, start_process, make_token, tmp_path):
    """The page offers the owner's own formats (not another owner's) and uploads with the
    one picked, sent as a field before the file."""
    start_process("worker.py")
    alice, bob = make_token("alice"), make_token("bob")
    post_json(f"{api_url}/api/v1/formats", alice, MYAPP)
    post_json(f"{api_url}/api/v1/formats", bob, {**MYAPP, "name": "bobs"})
    sign_in(page, api_url, alice)
    picker = page.locator("#format")
    expect(picker.locator("optgroup[label=Yours] option")).to_have_text(["myapp"])
    expect(picker.locator("optgroup[label='Built in'] option")).to_contain_text(["pino", "otel"])
    expect(picker).to_have_value("auto")

    file = tmp_path / "gateway.jsonl"
    file.write_text(
        "".join(json.dumps({**MYAPP_LINE, "text": f"request {n}"}) + "\n" for n in range(5))
    )
    picker.select_option("myapp")
    page.set_input_files("#file", file)
    page.click("#send")
    card = page.locator("#jobs article.job")
    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(card.locator(".valid")).to_have_text("5")
    job = get_json(f"{api_url}/api/v1/jobs/{card.get_attribute('data-job-id')}", alice)
    assert (job["format"], job["formats"]) == ("myapp", {"myapp": 5})


def post_json(url: str, token: str, body: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


# --------------------------------------------------------------------------- deleting


def test_a_finished_job_is_deleted_from_its_card(page, api_url, start_process, make_token):
    start_process("worker.py")
    token = make_token("alice")
    card = upload_the_sample_to_completion(page, api_url, token)
    job_id = card.get_attribute("data-job-id")

    card.locator(".delete").click()
    expect(card.locator(".confirm")).to_be_visible()
    expect(card.locator(".delete")).to_be_hidden()
    card.locator(".no").click()  # changed my mind
    expect(card.locator(".confirm")).to_be_hidden()
    card.locator(".delete").click()
    screenshot(page, "browser-delete-confirm.png")
    card.locator(".yes").click()

    expect(card).to_have_count(0)
    expect(page.locator("#jobs")).to_have_text("No jobs yet.")
    assert get_status(f"{api_url}/api/v1/jobs/{job_id}", token) == 404
    page.reload()
    expect(page.locator("#jobs")).to_have_text("No jobs yet.")


def test_a_job_a_worker_holds_is_not_deleted_and_its_card_says_why(
    page, api_url, settings, make_token, console_errors
):
    """No worker runs: the job stays queued (deletable), and the test takes the worker's lock
    on it, as a worker that just picked it up would hold it."""
    token = make_token("alice")
    sign_in(page, api_url, token)
    page.set_input_files("#file", SAMPLE)
    page.click("#send")
    card = page.locator("#jobs article.job")
    expect(card).to_have_attribute("data-status", "queued")
    job_id = card.get_attribute("data-job-id")

    with psycopg.connect(settings.database_url, autocommit=True) as worker_conn:
        worker_conn.execute(core.QUERIES["try_lock_job"], {"job_id": job_id})
        card.locator(".delete").click()
        card.locator(".yes").click()
        expect(card.locator(".delete-problem")).to_have_text(
            "Not deleted: a worker is processing this job right now; delete it once it has "
            "completed or failed"
        )
        expect(card.locator(".delete")).to_be_visible()
        expect(card.locator(".confirm")).to_be_hidden()
        screenshot(page, "browser-delete-refused.png")
        # Unlocked here: a closed connection's backend lets its locks go when it has exited,
        # which a busy machine may not have done by the DELETE below.
        worker_conn.execute(core.QUERIES["unlock_job"], {"job_id": job_id})
    expected_errors(console_errors, "status of 409")

    # Deleted elsewhere meanwhile (another tab, say): the API closes the card's WebSocket
    # with 4404, and the card goes by itself.
    request = urllib.request.Request(
        f"{api_url}/api/v1/jobs/{job_id}", method="DELETE", headers=bearer(token)
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 204
    expect(card).to_have_count(0)
    expect(page.locator("#jobs")).to_have_text("No jobs yet.")


# --------------------------------------------------------------------------- exploring

LEVELS = ("debug", "info", "warning", "error", "critical")
EXPLORE_PAGE = 50  # the view's page size (static/explore.js)
CHART_BARS = """bars => bars.map(bar => ({start: bar.dataset.start, ...Object.fromEntries(
  ["debug", "info", "warning", "error", "critical"].map(l => [l, Number(bar.dataset[l])]))}))"""


def test_the_explore_view_shows_a_jobs_events_as_the_api_reads_them(
    page, api_url, start_process, make_token
):
    """A card opens its job's events: the chart's bars and the table are the API's histogram
    and events page; a level filter, a bar (its bucket becomes from/to), Reset and paging each
    change both to the API's answer for the same filters."""
    start_process("worker.py")
    start_ready_relay(start_process)
    token = make_token("alice")
    card = upload_the_sample_to_completion(page, api_url, token)
    base = f"{api_url}/api/v1/jobs/{card.get_attribute('data-job-id')}"
    card.locator(".events").click()
    view = page.locator("#explore")
    expect(view).to_be_visible()
    expect(view.locator("h2")).to_have_text("Events of sample.jsonl")
    # The relay delivers the events shortly after the job completes: the view follows until
    # ClickHouse holds every valid line's event.
    expect(page.locator("#chart svg")).to_have_attribute(
        "data-events", str(SAMPLE_VALID), timeout=60_000
    )
    expect(view).to_have_attribute("data-live", "false")
    expect(page.locator("#explore-live")).to_be_hidden()
    histogram, first = expect_the_view_to_match_the_api(page, base, token, "")
    assert len(histogram["buckets"]) > 1 and first["next"]
    expect(page.locator("#events-page")).to_have_text(f"1–{EXPLORE_PAGE} of {SAMPLE_VALID}")
    assert page.evaluate("location.hash") == f"#/jobs/{card.get_attribute('data-job-id')}"
    expect(page.locator("#events-prev")).to_be_disabled()

    page.check("#explore-filters input[name=level][value=error]")
    page.click("#explore-apply")
    histogram, _ = expect_the_view_to_match_the_api(page, base, token, "level=error")
    assert 0 < histogram["events"] < SAMPLE_VALID

    # A bar narrows the time range to its bucket: from/to fill in, the table holds its events.
    bucket = max(histogram["buckets"], key=lambda b: sum(b["counts"].values()))
    start = dt.datetime.fromisoformat(bucket["start"].replace("Z", "+00:00"))
    end = start + dt.timedelta(seconds=histogram["interval_s"])
    page.click(f"#chart .bucket[data-start='{bucket['start']}']")
    query = urlencode([("level", "error"), ("from", rfc3339(start)), ("to", rfc3339(end))])
    _, narrowed = expect_the_view_to_match_the_api(page, base, token, query)
    assert (
        page.eval_on_selector("#explore-filters [name=from]", "i => i.valueAsNumber")
        == start.timestamp() * 1000
    )
    assert (
        page.eval_on_selector("#explore-filters [name=to]", "i => i.valueAsNumber")
        == end.timestamp() * 1000
    )
    assert len(narrowed["events"]) == sum(bucket["counts"].values())
    for event in narrowed["events"]:
        assert event["level"] == "error"
        assert start <= dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")) < end

    # Reset, then page with next (and back), keyboard on the bars.
    page.click("#explore-reset")
    expect(page.locator("#explore-filters [name=from]")).to_have_value("")
    full, _ = expect_the_view_to_match_the_api(page, base, token, "")
    page.click("#events-next")
    expect(view).to_have_attribute("data-page", "2")
    expect(page.locator("#events-page")).to_have_text(
        f"{EXPLORE_PAGE + 1}–{2 * EXPLORE_PAGE} of {SAMPLE_VALID}"
    )
    second = get_json(f"{api_url}{first['next']}", token)
    expect_rows(page, second)
    assert second["events"][0]["line_no"] > first["events"][-1]["line_no"]
    expect(page.locator("#events-prev")).to_be_enabled()
    page.locator("#chart .bucket").first.focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#chart .bucket").nth(1)).to_be_focused()
    screenshot(page, "browser-explore.png")
    page.click("#events-prev")
    expect(view).to_have_attribute("data-page", "1")
    expect_rows(page, first)

    # The keyboard picks a bar as a click does, and keeps the focus on the chart.
    page.locator("#chart .bucket").first.focus()
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    last = dt.datetime.fromisoformat(full["buckets"][-1]["start"].replace("Z", "+00:00"))
    expect(view).to_have_attribute(
        "data-query",
        urlencode(
            [
                ("from", rfc3339(last)),
                ("to", rfc3339(last + dt.timedelta(seconds=full["interval_s"]))),
            ]
        ),
    )
    expect(page.locator("#chart .bucket").first).to_be_focused()


def rfc3339(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def expect_the_view_to_match_the_api(page: Page, base: str, token: str, query: str):
    """Once the view shows `query`'s answer: its bars are the API's histogram and its table the
    API's first events page for the same filters; (histogram, page)."""
    expect(page.locator("#explore")).to_have_attribute("data-query", query)
    histogram = get_json(f"{base}/histogram?{query}", token)
    expect(page.locator("#chart svg")).to_have_attribute("data-events", str(histogram["events"]))
    expect(page.locator("#chart svg")).to_have_attribute(
        "data-interval", str(histogram["interval_s"])
    )
    bars = [
        {"start": b["start"], **{level: b["counts"].get(level, 0) for level in LEVELS}}
        for b in histogram["buckets"]
    ]
    # The attributes and the bars are drawn in turn: wait for the bars too, as expect() does.
    drawn: list = []
    try:
        wait_for(
            lambda: (
                drawn.append(page.eval_on_selector_all("#chart .bucket", CHART_BARS))
                or drawn[-1] == bars
            ),
            timeout=15,
            what="the chart's bars",
        )
    except AssertionError:
        assert drawn[-1] == bars  # says how they differ
    events = get_json(f"{base}/events?limit={EXPLORE_PAGE}&{query}", token)
    expect_rows(page, events)
    return histogram, events


def expect_rows(page: Page, events_page: dict) -> None:
    rows = page.locator("#events tbody tr.event")
    expect(rows.locator("td.line")).to_have_text([str(e["line_no"]) for e in events_page["events"]])
    expect(rows.locator("td.message")).to_have_text([e["message"] for e in events_page["events"]])
    expect(rows.locator("td.level")).to_have_text([e["level"] for e in events_page["events"]])


def test_the_explore_view_follows_a_job_while_its_events_arrive(
    page, api_url, start_process, make_token
):
    """Opened while the job is processing, the view refreshes as batches are delivered (the
    chart's count grows) and stops following once ClickHouse holds every valid line's event."""
    start_process("worker.py", EH_LINE_DELAY_MAX_S="0.03", EH_BATCH_LINES="20")  # ~4 s a file
    start_ready_relay(start_process)
    sign_in(page, api_url, make_token("alice"))
    page.set_input_files("#file", SAMPLE)
    page.click("#send")
    card = page.locator("#jobs article.job")
    expect(card).to_have_attribute("data-status", "processing", timeout=30_000)
    page.evaluate("""() => {
      window.seenCounts = [];
      new MutationObserver(() => window.seenCounts.push(
        Number(document.querySelector("#chart svg")?.dataset.events ?? 0)))
        .observe(document.getElementById("chart"), {childList: true});
    }""")
    card.locator(".events").click()
    expect(page.locator("#explore")).to_have_attribute("data-live", "true")
    expect(page.locator("#explore-live")).to_be_visible()
    expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
    expect(page.locator("#chart svg")).to_have_attribute(
        "data-events", str(SAMPLE_VALID), timeout=60_000
    )
    expect(page.locator("#explore")).to_have_attribute("data-live", "false")
    seen = [n for n in page.evaluate("window.seenCounts") if n]  # 0: cleared, or none yet
    assert seen == sorted(seen) and seen[-1] == SAMPLE_VALID, seen
    assert len(set(seen)) > 1, f"the view drew the events once only: {seen}"


def test_the_explore_view_says_when_clickhouse_cannot_answer(
    page, settings, start_process, make_token, console_errors
):
    """ClickHouse out of reach: the two reads answer 503, and the view says so in words; as it
    does a filter the API refuses."""
    url, _proc = serve_api(
        start_process, CLICKHOUSE_READ_URL="http://eventhorizon:x@127.0.0.1:9/eventhorizon"
    )
    sign_in(page, url, make_token("alice"))
    page.set_input_files("#file", SAMPLE)
    page.click("#send")  # no worker: the job stays queued
    card = page.locator("#jobs article.job")
    expect(card).to_have_attribute("data-status", "queued")
    card.locator(".events").click()
    expect(page.locator("#explore-message")).to_have_text(
        "Events cannot be read now: ClickHouse, where events are read, cannot answer now; "
        "retry later (uploads and job status are not affected)"
    )
    expect(page.locator("#explore #chart")).to_be_empty()
    expect(page.locator("#events tbody tr")).to_have_count(0)
    expect(page.locator("#token-form")).to_be_hidden()
    screenshot(page, "browser-explore-unavailable.png")
    expected_errors(console_errors, "status of 503", count=2)

    # A filter the API refuses (422) is said as plainly.
    page.fill("#explore-filters [name=from]", "2026-11-21T00:00:00")
    page.fill("#explore-filters [name=to]", "2026-11-20T00:00:00")
    page.click("#explore-apply")
    expect(page.locator("#explore-message")).to_have_text(
        "Events not read: from must be earlier than to"
    )
    expected_errors(console_errors, "status of 422", count=2)


# --------------------------------------------------------------------------- the policy


def test_the_docs_page_renders_within_the_policy(page, api_url):
    response = page.goto(f"{api_url}/docs")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("#operations h2")).to_have_text("Operations")
    expect(page.locator("#operations article.op").first).to_be_visible()
    expect(page.locator("#schemas h2")).to_have_text("Schemas")
    screenshot(page, "browser-docs.png", full_page=False)  # its first screen: the page is long


def test_a_policy_violation_fails_the_test(page, api_url, console_errors):
    """What the `page` fixture relies on: code the policy blocks is reported as an error."""
    response = page.goto(f"{api_url}/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.evaluate("""() => {
      const script = document.createElement("script");
      script.textContent = "window.inlineRan = true";
      document.body.append(script);
      document.body.insertAdjacentHTML("beforeend", '<p style="color: red">styled</p>');
    }""")
    assert page.evaluate("window.inlineRan") is None
    reported = set()
    deadline = time.monotonic() + 5
    while len(reported) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # lets Playwright deliver the console events
        reported = {e.split(" blocked")[0] for e in console_errors if "CSP violation" in e}
    assert reported == {"CSP violation: script-src-elem", "CSP violation: style-src-attr"}
    assert (
        sum("violates the following Content Security Policy" in e for e in console_errors) == 2
    )  # Chromium's own messages catch them too
    console_errors.clear()
