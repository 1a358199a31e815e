"""The page's Search view and the events tables' opened rows, in Debian's Chromium as
test_browser.py drives it (its fixtures: no browser download, CSP violations and console errors
fail a test): two uploads searched at once, at desktop (1280x800) and phone (390x844) sizes."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from urllib.parse import parse_qsl, urlencode

import pytest
from playwright.sync_api import Page, expect

from pages import expected_errors, get_json, screenshot, sign_in
from processes import serve_api, start_ready_relay

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
LEVELS = ("debug", "info", "warning", "error", "critical")
START = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)


def lines(service: str, count: int, offset_ms: int) -> str:
    """`count` events of `service`, 7 s apart; request r-<n % 5>, so requests cross files."""
    out = []
    for n in range(count):
        moment = START + dt.timedelta(milliseconds=offset_ms + n * 7000)
        out.append(
            json.dumps(
                {
                    "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "level": LEVELS[n % 5],
                    "service": service,
                    "event_type": f"{service}.step",
                    "message": f"{service} step {n}",
                    "environment": "production",
                    "context": {"request_id": f"r-{n % 5}", "http": {"status": 200 + n % 3}},
                }
            )
        )
    return "\n".join(out) + "\n"


@pytest.fixture
def two_jobs(start_process, api_url, make_token, tmp_path):
    """Alice's token, and two files (checkout: 30 events, payments: 20) to upload."""
    start_process("worker.py")
    start_ready_relay(start_process)
    files = []
    for service, count, offset in [("checkout", 30, 0), ("payments", 20, 10)]:
        path = tmp_path / f"{service}.jsonl"
        path.write_text(lines(service, count, offset))
        files.append(path)
    return make_token("alice"), files


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def upload_both(page: Page, api_url: str, token: str, files) -> list[str]:
    sign_in(page, api_url, token)
    for n, path in enumerate(files, 1):
        page.set_input_files("#file", path)
        page.click("#send")
        expect(page.locator("#jobs article.job")).to_have_count(n)
    ids = []
    for path in files:  # in the files' order (the newest card is first)
        card = page.locator("#jobs article.job").filter(
            has=page.locator(".name", has_text=path.name)
        )
        expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
        ids.append(card.get_attribute("data-job-id"))
    return ids


def hash_params(page: Page) -> list[tuple[str, str]]:
    fragment = page.evaluate("location.hash")
    return sorted(parse_qsl(fragment.split("?", 1)[1])) if "?" in fragment else []


def expect_rows_to_match(page: Page, table: str, api_url: str, token: str, query: str) -> dict:
    """The table's rows are the API's first search page (50) for `query`; that page."""
    events = get_json(f"{api_url}/api/v1/events?limit=50&{query}", token)["events"]
    rows = page.locator(f"{table} tbody tr.event")
    expect(rows.locator("td.message")).to_have_text([e["message"] for e in events], timeout=60_000)
    expect(rows.locator("td.service")).to_have_text([e["service"] for e in events])
    # Each event's file: these tests' files are named for their service.
    expect(rows.locator("td.file")).to_have_text([f"{e['service']}.jsonl" for e in events])
    return events


def open_search(page: Page, api_url: str, token: str, total: int) -> None:
    """The top bar's Search, once the relay has delivered every event (the view reads once)."""
    expect_count(api_url, token, total)
    page.click("#nav-search")
    expect(page.locator("#search")).to_be_visible()
    expect(page.locator("#upload")).to_be_hidden()
    expect(page.locator("#search")).to_have_attribute("data-total", str(total))


def expect_count(api_url: str, token: str, total: int) -> None:
    """Waits (as expect does) until the owner's histogram counts `total` events."""
    for _attempt in range(600):
        if get_json(f"{api_url}/api/v1/events/histogram", token)["events"] == total:
            return
        time.sleep(0.1)
    assert get_json(f"{api_url}/api/v1/events/histogram", token)["events"] == total


def test_search_across_two_uploads_filters_opens_rows_keeps_its_url_and_exports(
    open_page, api_url, two_jobs, tmp_path
):
    token, files = two_jobs
    page = open_page()
    page.set_viewport_size(DESKTOP)
    job_ids = upload_both(page, api_url, token, files)

    # Each card shows when it was uploaded and the format its lines were read in.
    for job_id in job_ids:
        job = get_json(f"{api_url}/api/v1/jobs/{job_id}", token)
        card = page.locator(f"#jobs article.job[data-job-id='{job_id}']")
        uploaded = dt.datetime.fromisoformat(job["created_at"]).astimezone(dt.UTC)
        expect(card.locator(".uploaded")).to_have_text(uploaded.strftime("%Y-%m-%d %H:%M:%S"))
        detected = ", ".join(f"{name} ({n})" for name, n in job["formats"].items())
        expect(card.locator(".format")).to_have_text(f"auto: {detected}")
        assert job["formats"]

    open_search(page, api_url, token, 50)
    assert hash_params(page) == [("range", "all")]
    expect(page.locator("#search-page")).to_have_text("1–50 of 50")
    expect_rows_to_match(page, "#search-events", api_url, token, "")
    facet = page.locator("#facet-lists .facet[data-field=service] button.facet-value")
    expect(facet).to_have_text(["checkout30", "payments20"])
    # The layout uses the width: the results are wider than the old 730 px column.
    assert page.locator("#search-events").bounding_box()["width"] > 900
    screenshot(page, "browser-search.png")

    # An alt-click leaves a value out (not.service=…, a chip saying ≠, the value struck
    # through); a click on it takes that back. A click filters by a value; a second value of
    # the same field widens it (any of them).
    facet.filter(has_text="payments").click(modifiers=["Alt"])
    expect(page.locator("#search")).to_have_attribute("data-total", "30")
    assert ("not.service", "payments") in hash_params(page)
    expect(page.locator("#search-chips button.chip")).to_have_text(["service ≠ payments ×"])
    expect(facet.filter(has_text="payments")).to_have_class("facet-value excluded")
    expect_rows_to_match(page, "#search-events", api_url, token, "not.service=payments")
    facet.filter(has_text="payments").click()
    expect(page.locator("#search")).to_have_attribute("data-total", "50")
    assert hash_params(page) == [("range", "all")]
    facet.filter(has_text="payments").click()
    expect(page.locator("#search")).to_have_attribute("data-total", "20")
    assert ("service", "payments") in hash_params(page)
    expect_rows_to_match(page, "#search-events", api_url, token, "service=payments")
    facet.filter(has_text="checkout").click()
    expect(page.locator("#search")).to_have_attribute("data-total", "50")
    expect(facet.and_(page.locator("[aria-pressed=true]"))).to_have_count(2)
    page.locator(
        "#facet-lists .facet[data-field=level] button.facet-value", has_text="error"
    ).click()
    expect(page.locator("#search")).to_have_attribute("data-total", "10")
    query = "level=error&service=checkout&service=payments"
    events = expect_rows_to_match(page, "#search-events", api_url, token, query)
    expect(page.locator("#search-page")).to_have_text("1–10 of 10")

    # A row opens to its whole JSON; a context value in it filters by that value.
    first = page.locator("#search-events tbody tr.event").first
    first.click()
    expect(first).to_have_attribute("aria-expanded", "true")
    detail = page.locator("#search-events tr.detail")
    assert json.loads(detail.locator("pre.json").text_content()) == events[0]
    request_id = events[0]["context"]["request_id"]
    detail.locator("button.value[data-name='context.request_id']").click()
    query += f"&context.request_id={request_id}"
    expect(page.locator("#search-chips button[data-name='context.request_id']")).to_have_count(1)
    everyone = get_json(f"{api_url}/api/v1/events?{query}", token)["events"]
    assert {e["service"] for e in everyone} == {"checkout", "payments"}  # across both files
    expect(page.locator("#search")).to_have_attribute("data-total", str(len(everyone)))
    expect_rows_to_match(page, "#search-events", api_url, token, query)
    state = hash_params(page)

    # A reload shows the same view, from the URL alone.
    page.reload()
    expect(page.locator("#search")).to_be_visible()
    expect(page.locator("#search")).to_have_attribute("data-total", str(len(everyone)))
    assert hash_params(page) == state
    expect_rows_to_match(page, "#search-events", api_url, token, query)
    expect(page.locator("#search-chips button.chip")).to_have_count(4)

    # Export downloads the filter's events (fetched with the token, saved from a blob).
    with page.expect_download() as download:
        page.click("#search-export")
    saved = tmp_path / "export.ndjson"
    download.value.save_as(saved)
    exported = [json.loads(line) for line in saved.read_text().splitlines()]
    assert exported == everyone

    # A chip takes its filter away.
    page.locator("#search-chips button[data-name='context.request_id']").click()
    base = [("level", "error"), ("service", "checkout"), ("service", "payments")]
    expect_shown(page, [*base, ("range", "all")])

    # A drag across four bars narrows the time to their span, a click on a bar to its bucket.
    histogram = get_json(f"{api_url}/api/v1/events/histogram?{urlencode(base)}", token)
    bars = page.locator("#search-chart .bucket")
    page.mouse.move(*centre(bars.nth(0)))
    page.mouse.down()
    page.mouse.move(*centre(bars.nth(3)), steps=5)
    page.mouse.up()
    expect(page.locator("#search-form [name=range]")).to_have_value("custom")
    expect_span(page, histogram, 0, 3)
    params = dict(hash_params(page))
    expect_shown(page, [*base, ("from", params["from"]), ("range", "custom"), ("to", params["to"])])
    span = urlencode([*base, ("from", params["from"]), ("to", params["to"])])
    expect_rows_to_match(page, "#search-events", api_url, token, span)
    histogram = get_json(f"{api_url}/api/v1/events/histogram?{span}", token)
    bars.last.click()
    expect_span(page, histogram, len(histogram["buckets"]) - 1, len(histogram["buckets"]) - 1)
    params = dict(hash_params(page))
    expect_rows_to_match(
        page,
        "#search-events",
        api_url,
        token,
        urlencode([*base, ("from", params["from"]), ("to", params["to"])]),
    )


def centre(locator) -> tuple[float, float]:
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def expect_shown(page: Page, params: list[tuple[str, str]]) -> None:
    """Waits until the Search view shows `params` (in any order)."""
    page.wait_for_function(
        """want => {
      const shown = document.getElementById("search").dataset.shown;
      return shown !== undefined
        && JSON.stringify([...new URLSearchParams(shown)].map(String).sort())
           === JSON.stringify(want);
    }""",
        arg=sorted(f"{name},{value}" for name, value in params),
    )


def expect_span(page: Page, histogram: dict, first: int, last: int) -> None:
    """The URL's from/to: the start of bucket `first` to the end of bucket `last`."""
    buckets, interval = histogram["buckets"], dt.timedelta(seconds=histogram["interval_s"])
    expect(page.locator("#search")).to_have_attribute(
        "data-query", re.compile(re.escape(urlencode({"range": "custom"})))
    )
    params = dict(hash_params(page))
    assert parse_time(params["from"]) == parse_time(buckets[first]["start"])
    assert parse_time(params["to"]) == parse_time(buckets[last]["start"]) + interval


def test_search_on_a_phone_puts_the_message_first_and_the_facets_away(
    open_page, api_url, two_jobs, tmp_path
):
    token, files = two_jobs
    recent = tmp_path / "recent.jsonl"  # one event of a few minutes ago, for the time picker
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    recent.write_text(
        json.dumps(
            {
                "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": "info",
                "service": "gateway",
                "event_type": "request",
                "message": "just now",
                "context": {"request_id": "r-now"},
            }
        )
        + "\n"
    )
    page = open_page()
    page.set_viewport_size(PHONE)
    upload_both(page, api_url, token, [*files, recent])
    open_search(page, api_url, token, 51)
    expect(page.locator("#search-facets")).not_to_have_attribute("open", "")
    page.select_option("#search-form [name=range]", "1h")  # the last hour: the recent one only
    expect(page.locator("#search")).to_have_attribute("data-total", "1")
    expect(page.locator("#search-events tbody tr.event td.message")).to_have_text(["just now"])
    assert ("range", "1h") in hash_params(page)
    page.select_option("#search-form [name=range]", "all")
    expect(page.locator("#search")).to_have_attribute("data-total", "51")
    row = page.locator("#search-events tbody tr.event").first
    message, when = row.locator("td.message").bounding_box(), row.locator("td.time").bounding_box()
    assert message["y"] < when["y"] and message["x"] >= 0
    assert message["y"] < PHONE["height"], "the first message is on the first screen"
    assert row.locator("td").evaluate_all(
        "cells => cells.every(c => c.scrollWidth <= c.clientWidth)"
    ), "a cell's text overflows it (onto the next one)"
    row.click()
    expect(page.locator("#search-events tr.detail pre.json")).to_be_visible()
    page.locator("#search-facets summary").click()
    page.locator(
        "#facet-lists .facet[data-field=service] button.facet-value", has_text="checkout"
    ).click()
    expect(page.locator("#search")).to_have_attribute("data-total", "30")
    screenshot(page, "browser-search-phone.png")
    scroll_width, client_width = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll_width <= client_width, "the page scrolls sideways"


def test_a_jobs_events_view_opens_rows_filters_by_values_and_keeps_its_url(
    open_page, api_url, two_jobs
):
    token, files = two_jobs
    page = open_page()
    page.set_viewport_size(DESKTOP)
    job_ids = upload_both(page, api_url, token, files)
    expect_count(api_url, token, 50)
    checkout = job_ids[0]
    page.locator(f"#jobs article.job[data-job-id='{checkout}'] .events").click()
    view = page.locator("#explore")
    expect(page.locator("#chart svg")).to_have_attribute("data-events", "30", timeout=60_000)
    expect(page.locator("#events-page")).to_have_text("1–30 of 30")

    row = page.locator("#events tbody tr.event").first
    row.click()
    page.locator("#events tr.detail button.value[data-name=level]").click()
    level = page.locator("#events tbody tr.event td.level").first.text_content()
    expect(view).to_have_attribute("data-query", f"level={level}")
    expect(page.locator("#chart svg")).to_have_attribute("data-events", "6")
    assert page.evaluate("location.hash") == f"#/jobs/{checkout}?level={level}"

    page.reload()  # the view, its job and its filters come back from the URL
    expect(view).to_be_visible()
    expect(view).to_have_attribute("data-query", f"level={level}")
    expect(page.locator(f"#explore-filters input[name=level][value={level}]")).to_be_checked()
    expect(page.locator("#chart svg")).to_have_attribute("data-events", "6")

    # Several services, comma-separated.
    page.fill("#explore-filters [name=service]", "checkout, nobody")
    page.click("#explore-apply")
    expect(view).to_have_attribute("data-query", f"level={level}&service=checkout&service=nobody")
    expect(page.locator("#chart svg")).to_have_attribute("data-events", "6")

    # A context value opens the Search view on this job with it.
    page.locator("#events tbody tr.event").first.click()
    page.locator("#events tr.detail button.value[data-name='context.request_id']").click()
    expect(page.locator("#search")).to_be_visible()
    params = hash_params(page)
    assert ("job_id", checkout) in params and ("range", "all") in params
    expect(page.locator("#search-chips button[data-name=job_id]")).to_have_text(
        "file = checkout.jsonl ×"
    )
    request_id = dict(params)["context.request_id"]
    query = urlencode([("job_id", checkout), ("context.request_id", request_id)])
    events = expect_rows_to_match(page, "#search-events", api_url, token, query)
    assert events and {e["job_id"] for e in events} == {checkout}


def test_search_says_when_clickhouse_cannot_answer_or_a_filter_is_refused(
    open_page, settings, start_process, make_token, console_errors
):
    url, _proc = serve_api(
        start_process, CLICKHOUSE_READ_URL="http://eventhorizon:x@127.0.0.1:9/eventhorizon"
    )
    page = open_page()
    sign_in(page, url, make_token("alice"))
    page.click("#nav-search")
    away = (
        "ClickHouse, where events are read, cannot answer now; retry later (uploads and "
        "job status are not affected)"
    )
    expect(page.locator("#search-message")).to_have_text(f"Events cannot be read now: {away}")
    expect(page.locator("#search-events tbody tr")).to_have_count(0)
    expect(page.locator("#search-page")).to_have_text("")
    expected_errors(console_errors, "status of 503", count=5)  # histogram, page, 3 facets

    page.click("#search-export")
    expect(page.locator("#search-message")).to_have_text(f"Not exported: {away}")
    expected_errors(console_errors, "status of 503")

    # A filter the API refuses, from an edited address, is said as plainly.
    page.goto(f"{url}/#/search?range=custom&from=2026-11-21T00:00:00Z&to=2026-11-20T00:00:00Z")
    expect(page.locator("#search-message")).to_have_text(
        "Events not read: from must be earlier than to"
    )
    expected_errors(console_errors, "status of 422", count=5)
