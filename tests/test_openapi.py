"""The API contract: static/openapi.json is valid OpenAPI 3.1, names exactly the routes the app
registers, and the running app answers as it says (schemathesis fuzzing every operation)."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import io
import json
import time
import uuid

import aiohttp
import hypothesis
import jsonschema
import pytest
import referencing
import requests
import schemathesis
from hypothesis import strategies as st
from referencing.jsonschema import DRAFT202012
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import core
import event_log
import eventhorizon
import jobs
from helpers import (
    bearer,
)
from live_states import (
    job_in_memory,
)
from processes import serve_api

DOCUMENT = json.loads((core.ROOT / "static" / "openapi.json").read_text())
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 100
FUZZ_SHARDS = 4  # run side by side (pytest-xdist): the whole fuzz was the suite's longest test

VALID = {
    "timestamp": "2026-11-23T10:00:00Z",
    "level": "info",
    "service": "checkout",
    "event_type": "order.created",
    "message": "order created",
}


def documented_routes() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in METHODS
    }


def registered_routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route but the static files and the HEADs aiohttp adds to GETs."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and not route.resource.canonical.startswith("/static")
    }


def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for one of the document's component schemas, $refs resolved in the document."""
    resource = referencing.Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
    registry = referencing.Registry().with_resource("urn:eventhorizon:openapi", resource)
    return jsonschema.Draft202012Validator(
        {"$ref": f"urn:eventhorizon:openapi#/components/schemas/{name}"},
        registry=registry,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


# --------------------------------------------------------------------------- the document


def test_document_is_valid_openapi_3_1():
    assert DOCUMENT["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(DOCUMENT).validate()
    for schema in DOCUMENT["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_error_is_problem_json():
    # /readyz answers 503 with its usual report: probes read the same shape either way.
    for path, item in DOCUMENT["paths"].items():
        if path == "/readyz":
            continue
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = DOCUMENT["components"]["responses"][response["$ref"].split("/")[-1]]
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (method, path)


def test_document_names_exactly_the_registered_routes(settings):
    app = eventhorizon.init_app(settings)
    registered, documented = registered_routes(app), documented_routes()
    assert registered - documented == set(), "routes missing from static/openapi.json"
    assert documented - registered == set(), "routes in static/openapi.json the app does not have"


async def test_documented_shapes_match_real_jobs(settings, aiohttp_client, make_token):
    # The fuzzer rarely manages a valid upload, so the job shapes are checked on a real one.
    client = await aiohttp_client(eventhorizon.init_app(settings), headers=bearer(make_token()))
    form = aiohttp.FormData()
    content = json.dumps(VALID).encode() + b"\nnot json\n"
    form.add_field(
        "file", io.BytesIO(content), filename="app.jsonl", content_type="application/x-ndjson"
    )
    response = await client.post("/api/v1/files/upload", data=form)
    assert response.status == 202, await response.text()
    job = await response.json()
    validator("Job").validate(job)

    response = await client.get("/api/v1/openapi.json")
    assert response.content_type == "application/json"
    assert await response.json() == DOCUMENT
    response = await client.get("/docs")
    assert response.content_type == "text/html"
    assert "/static/docs.js" in await response.text()

    listed = await (await client.get("/api/v1/jobs")).json()
    assert listed["jobs"] == [job]
    stats = await client.get("/api/v1/stats", headers=bearer(make_token("root", admin=True)))
    validator("Stats").validate(await stats.json())
    errors = await (await client.get(f"/api/v1/jobs/{job['job_id']}/errors?limit=1")).json()
    validator("LineErrorPage").validate(errors)


@pytest.mark.parametrize(
    "body",
    [
        b'--b\r\nContent-Disposition: form-data; name="\x0c\xc2\xba"\r\n\r\n{}\r\n--b--\r\n',
        b"--x\r\nnot a multipart body",
    ],
)
async def test_malformed_multipart_is_400(settings, aiohttp_client, make_token, body):
    # Found by the fuzzer: aiohttp's multipart parser raised and the API answered 500.
    client = await aiohttp_client(eventhorizon.init_app(settings), headers=bearer(make_token()))
    response = await client.post(
        "/api/v1/files/upload",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status == 400, await response.text()
    assert response.content_type == "application/problem+json"


def test_job_schema_matches_every_state():
    """jobs.job_json in each status, timestamps set or null as they are in the database."""
    now = dt.datetime.now(dt.UTC)
    job_row = dataclasses.replace(
        job_in_memory(),
        job_id=uuid.UUID("081be6e8-6d2f-4c1b-9a55-5a0f8ad1b6a4"),
        file_name="a.jsonl",
        status="failed",
        lines_total=3,
        lines_processed=1,
        bytes_processed=5,
        lines_valid=1,
        attempts=1,
        error="the stored file went missing",
        created_at=now,
        updated_at=now,
    )
    for status in ("queued", "processing", "completed", "failed"):
        row = dataclasses.replace(
            job_row,
            status=status,
            started_at=now if status != "queued" else None,
            completed_at=now if status in jobs.TERMINAL_STATUSES else None,
        )
        validator("Job").validate(jobs.job_json(row))
    lines_error = {
        "job_id": str(job_row.job_id),
        "errors": [{"line_no": 2, "reason": "x"}],
        "next": None,
    }
    validator("LineErrorPage").validate(lines_error)


# --------------------------------------------------------------------------- fuzzing


def jsonl_contents() -> st.SearchStrategy[bytes]:
    """File contents: binary junk, text, and lines of JSON (objects or not), blank lines and a
    BOM."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=6,
    )
    line = (
        st.dictionaries(
            st.sampled_from(sorted(VALID)) | st.text(max_size=8), values, max_size=6
        ).map(json.dumps)
        | values.map(json.dumps)
        | st.text(max_size=40)
        | st.just("")
    )
    lines = st.lists(line, max_size=8).map("\n".join).map(str.encode)
    return (
        st.binary(max_size=300)
        | lines
        | st.tuples(st.sampled_from([b"", b"\xef\xbb\xbf"]), lines).map(b"".join)
    )


@pytest.fixture
def api_url(settings, start_process) -> str:
    """The API as a process, its limit on failed authentications out of the way: cases that
    send their own (wrong) token would otherwise soon have every request answered 429, the
    rest of the run fuzzing nothing but that (tests/test_hostile.py checks the limit)."""
    url, _proc = serve_api(start_process, EH_AUTH_FAILURES_PER_MINUTE="1000000")
    return url


def fuzz_share(shard: int) -> set[str]:
    """The operations one shard fuzzes ("GET /api/v1/jobs", …): every `FUZZ_SHARDS`-th of the
    documented ones, so that the shards run side by side and together cover them all."""
    labels = sorted(
        f"{method} {path}" for method, path in documented_routes() if path != "/api/v1/openapi.json"
    )  # schemathesis leaves it out
    return set(labels[shard::FUZZ_SHARDS])


@pytest.mark.parametrize("shard", range(FUZZ_SHARDS))
def test_fuzz_every_operation(shard, api_url, make_token, fuzz_seed, settings):
    """Generated requests, valid and invalid, to every operation (a share of them per shard):
    no 5xx, and every answer is one the document allows (status code, content type, headers,
    body schema). The session carries an admin token, so requests get past authentication
    unless a case sends its own. CI runs the same cases every time (a fixed seed); a local run
    explores new ones, its seed printed (EH_TEST_SEED replays it)."""
    schema = schemathesis.openapi.from_url(f"{api_url}/api/v1/openapi.json", timeout=10)
    event_log.connect_clickhouse(settings.clickhouse_url).close()  # event_log, as a relay makes it
    session = requests.Session()
    session.headers.update(bearer(make_token("fuzzer", admin=True)))
    statuses = collections.Counter()
    session.hooks["response"].append(lambda r, *args, **kwargs: statuses.update([r.status_code]))
    share = fuzz_share(shard)
    failures, counts = {}, {}
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label not in share:
            continue
        strategies = [operation.as_strategy(schemathesis.GenerationMode.POSITIVE)]
        if operation.path_parameters or operation.query or operation.body:
            strategies.append(operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))
        label = operation.label
        counts[label] = 0

        @hypothesis.seed(fuzz_seed)
        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=st.one_of(strategies))
        def fuzz(case):
            counts[label] += 1  # noqa: B023  (fuzz() runs in this iteration, below)
            case.call_and_validate(base_url=api_url, session=session, checks=CHECKS, timeout=10)

        try:
            fuzz()
        except Exception as exc:  # keep going: one report for every operation that fails
            failures[label] = f"{type(exc).__name__}: {exc}"
    session.close()
    print(f"fuzzed {sum(counts.values())} requests in {time.monotonic() - started:.1f}s: {counts}")
    print(f"statuses: {dict(sorted(statuses.items()))}")
    assert set(counts) == share
    assert statuses.keys() - {401, 403, 429}  # past the token, into the API
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


def test_fuzz_uploads_of_generated_contents(api_url, make_token, fuzz_seed):
    """schemathesis names the file after its field, so its uploads stop at the name check (415);
    these get past it with a .jsonl name and content from binary junk to nearly valid lines."""
    operation = schemathesis.openapi.from_url(f"{api_url}/api/v1/openapi.json", timeout=10)[
        "/api/v1/files/upload"
    ]["POST"]
    session = requests.Session()
    session.headers.update(bearer(make_token("fuzzer", admin=True)))
    statuses = collections.Counter()

    @hypothesis.seed(fuzz_seed)
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(content=jsonl_contents())
    def fuzz_contents(content):
        response = session.post(
            f"{api_url}/api/v1/files/upload",
            timeout=10,
            files={"file": ("fuzz.jsonl", content, "application/x-ndjson")},
        )
        statuses.update([response.status_code])
        assert response.status_code in (202, 422), response.text
        operation.validate_response(response)

    with session:
        fuzz_contents()
    assert statuses[202] and statuses[422]
