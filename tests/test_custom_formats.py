"""Custom log formats over the API: registered, used by uploads, refused when unusable, and
each owner's own."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import pytest

import eventhorizon
import format_routes
from helpers import MYAPP, MYAPP_LINE, bearer, wait_for
from line_samples import CLEF

FORMATS = "/api/v1/formats"


@pytest.fixture
async def owners(settings, aiohttp_client, make_token):
    """Alice's and Bob's clients, and an admin's, on one API."""
    alice = await aiohttp_client(
        eventhorizon.init_app(settings), headers=bearer(make_token("alice"))
    )
    others = [
        aiohttp.ClientSession(base_url=alice.server.make_url("/"), headers=bearer(token))
        for token in (make_token("bob"), make_token("root", admin=True))
    ]
    yield alice, *others
    for session in others:
        await session.close()


@pytest.fixture
async def alice(owners):
    return owners[0]


def form_of(lines: list[dict], **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field(
        "file",
        io.BytesIO(b"".join(json.dumps(o).encode() + b"\n" for o in lines)),
        filename="app.jsonl",
        content_type="application/x-ndjson",
    )
    return form


async def problem(response, status: int) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    return await response.json()


def finished(db, job_id: str) -> dict:
    return wait_for(
        lambda: db.execute(
            "SELECT * FROM jobs WHERE job_id = %s AND status IN ('completed', 'failed')", (job_id,)
        ).fetchone(),
        60,
        what="the job to finish",
    )


async def test_a_registered_format_is_listed_and_maps_uploads(alice, db, start_process):
    """Registered once, named in an upload (as a query parameter or as a field before the
    file), and every line is mapped as the definition says, unmapped fields kept."""
    response = await alice.post(FORMATS, json=MYAPP)
    assert response.status == 201, await response.text()
    assert response.headers["Location"] == "/api/v1/formats/myapp"
    registered = await response.json()
    assert registered["definition"] == MYAPP and registered["name"] == "myapp"
    assert await (await alice.get(f"{FORMATS}/myapp")).json() == registered
    listed = await (await alice.get(FORMATS)).json()
    assert listed["formats"] == [registered] and "pino" in listed["builtin"]

    by_query = await alice.post(
        "/api/v1/files/upload?format=myapp",
        data=form_of([MYAPP_LINE, {**MYAPP_LINE, "sev": "SEVERE"}]),
    )
    by_field = await alice.post("/api/v1/files/upload", data=form_of([MYAPP_LINE], format="myapp"))
    jobs = [await r.json() for r in (by_query, by_field)]
    assert [r.status for r in (by_query, by_field)] == [202, 202], jobs
    assert [j["format"] for j in jobs] == ["myapp", "myapp"]
    start_process("worker.py")
    for job in jobs:
        assert finished(db, job["job_id"])["status"] == "completed"
    final = await (await alice.get(f"/api/v1/jobs/{jobs[0]['job_id']}")).json()
    assert (final["lines_valid"], final["formats"]) == (2, {"myapp": 2})
    entries = db.execute(
        "SELECT * FROM log_entries WHERE job_id = %s ORDER BY line_no", (jobs[0]["job_id"],)
    ).fetchall()
    assert [
        (e["level"], e["service"], e["environment"], e["event_type"], e["message"]) for e in entries
    ] == [
        ("warning", "gateway", "staging", "proxy.slow", "slow upstream"),
        ("critical", "gateway", "staging", "proxy.slow", "slow upstream"),
    ]
    assert entries[0]["context"] == {"app": {"build": 41}, "upstream": "db-1"}


async def test_a_formats_defaults_apply_to_its_uploads(alice, db, start_process):
    """Serilog's compact JSON, registered with a default level and a message template: a line
    without @l is stored as info, with its template as the message; one of `generic`'s too."""
    assert (await alice.post(FORMATS, json=CLEF)).status == 201
    assert (await (await alice.get(f"{FORMATS}/clef")).json())["definition"] == CLEF
    sample = {"@t": "2016-06-07T03:44:57.8532799Z", "@mt": "Hello, {User}", "User": "ann"}
    clef = await (
        await alice.post(
            "/api/v1/files/upload?format=clef",
            data=form_of([sample, {**sample, "@l": "Error", "@m": "Hello, ann"}]),
        )
    ).json()
    generic = await (await alice.post("/api/v1/files/upload", data=form_of([sample]))).json()
    start_process("worker.py")
    assert finished(db, clef["job_id"])["formats_seen"] == {"clef": 2}
    assert finished(db, generic["job_id"])["formats_seen"] == {"generic": 1}
    rows = db.execute(
        "SELECT job_id, level, message, context FROM log_entries "
        "WHERE job_id IN (%s, %s) ORDER BY job_id = %s, line_no",
        (clef["job_id"], generic["job_id"], generic["job_id"]),
    ).fetchall()
    assert [(r["level"], r["message"], r["context"]) for r in rows] == [
        ("info", "Hello, {User}", {"User": "ann"}),
        ("error", "Hello, ann", {"@mt": "Hello, {User}", "User": "ann"}),
        ("info", "Hello, {User}", {"User": "ann"}),
    ]


async def test_a_job_keeps_the_format_it_was_uploaded_with(alice, db, start_process):
    """Deleting the format (or registering another under its name) after an upload changes
    nothing for that job; a new upload naming the deleted format is refused."""
    assert (await alice.post(FORMATS, json=MYAPP)).status == 201
    job = await (
        await alice.post("/api/v1/files/upload?format=myapp", data=form_of([MYAPP_LINE]))
    ).json()
    assert (await alice.delete(f"{FORMATS}/myapp")).status == 204
    await problem(await alice.get(f"{FORMATS}/myapp"), 404)
    await problem(await alice.delete(f"{FORMATS}/myapp"), 404)
    await problem(
        await alice.post("/api/v1/files/upload?format=myapp", data=form_of([MYAPP_LINE])), 422
    )
    other = {**MYAPP, "fields": {"timestamp": ["nope"], "level": ["nope"]}}
    assert (await alice.post(FORMATS, json=other)).status == 201

    start_process("worker.py")
    row = finished(db, job["job_id"])
    assert (row["status"], row["lines_valid"], row["formats_seen"]) == (
        "completed",
        1,
        {"myapp": 1},
    )


async def test_formats_are_their_owners_own(owners, db):
    """Bob can neither see, use nor delete Alice's format (all as if it did not exist), an
    admin neither; each may have one of the same name, and an upload uses its owner's."""
    alice, bob, root = owners
    assert (await alice.post(FORMATS, json=MYAPP)).status == 201
    for session in (bob, root):
        await problem(await session.get(f"{FORMATS}/myapp"), 404)
        assert (await (await session.get(FORMATS)).json())["formats"] == []
        await problem(await session.delete(f"{FORMATS}/myapp"), 404)
        body = await problem(
            await session.post("/api/v1/files/upload?format=myapp", data=form_of([MYAPP_LINE])), 422
        )
        assert "one of your formats" in body["detail"]
    assert (await alice.get(f"{FORMATS}/myapp")).status == 200  # still there

    bobs = {**MYAPP, "fields": {"timestamp": ["at"], "level": ["lvl"]}, "time_unit": "iso"}
    assert (await bob.post(FORMATS, json=bobs)).status == 201
    job = await (
        await bob.post("/api/v1/files/upload?format=myapp", data=form_of([MYAPP_LINE]))
    ).json()
    copied = db.execute(
        "SELECT format_definition FROM jobs WHERE job_id = %s", (job["job_id"],)
    ).fetchone()["format_definition"]
    assert copied == bobs
    assert (await (await alice.get(f"{FORMATS}/myapp")).json())["definition"] == MYAPP


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({**MYAPP, "name": "pino"}, 422, "built-in format's name"),
        ({**MYAPP, "time_unit": "weeks", "fields": {}}, 422, "$.time_unit"),
        ({**MYAPP, "description": "a\u0000b"}, 422, "NUL character"),
        ("[" * 50_000 + "]" * 50_000, 413, "at most 65536 bytes"),
        ("[" * 30_000 + "]" * 30_000, 400, "not JSON"),  # deeper than the parser goes
        ('{"name": "x",', 400, "not JSON"),
    ],
)
async def test_unusable_definitions_are_refused_and_not_kept(alice, db, body, status, says):
    data = body if isinstance(body, str) else json.dumps(body)
    response = await alice.post(FORMATS, data=data, headers={"Content-Type": "application/json"})
    assert says in (await problem(response, status))["detail"]
    assert db.execute("SELECT count(*) AS n FROM log_formats").fetchone()["n"] == 0


async def test_each_problem_of_a_definition_is_listed(alice):
    bad = {"name": "x y", "fields": {"level": []}, "time_unit": "weeks"}
    body = await problem(await alice.post(FORMATS, json=bad), 422)
    assert len(body["errors"]) == 4 and all(e.startswith("$.") for e in body["errors"])


async def test_a_body_larger_than_the_limit_is_refused_without_a_length(alice, db):
    """Chunked (no Content-Length): the body is counted as it is read, and refused past
    64 KiB without being read to its end."""

    async def chunks():
        yield b'{"name": "big", "description": "'
        for _ in range(100):
            yield b"x" * 4096

    response = await alice.post(
        FORMATS, data=chunks(), headers={"Content-Type": "application/json"}
    )
    await problem(response, 413)
    assert db.execute("SELECT count(*) AS n FROM log_formats").fetchone()["n"] == 0


async def test_definitions_must_be_sent_as_json(alice):
    await problem(await alice.post(FORMATS, data=json.dumps(MYAPP)), 415)  # text/plain


async def test_a_name_is_registered_once(alice):
    assert (await alice.post(FORMATS, json=MYAPP)).status == 201
    body = await problem(await alice.post(FORMATS, json={**MYAPP, "levels": {}}), 409)
    assert "already" in body["detail"]
    assert (await (await alice.get(f"{FORMATS}/myapp")).json())["definition"] == MYAPP


async def test_no_owner_registers_more_than_the_cap_even_all_at_once(alice, db):
    """Twenty registrations at once with room for five: five land, fifteen are refused."""
    cap = format_routes.MAX_FORMATS_PER_OWNER
    for n in range(cap - 5):
        db.execute(
            "INSERT INTO log_formats (owner, name, definition) VALUES ('alice', %s, %s)",
            (f"f{n}", json.dumps({**MYAPP, "name": f"f{n}"})),
        )
    responses = await asyncio.gather(
        *(alice.post(FORMATS, json={**MYAPP, "name": f"new{n}"}) for n in range(20))
    )
    assert sorted(r.status for r in responses) == [201] * 5 + [409] * 15
    assert (
        db.execute("SELECT count(*) AS n FROM log_formats WHERE owner = 'alice'").fetchone()["n"]
        == cap
    )


@pytest.mark.parametrize(
    ("query", "fields", "status"),
    [
        ("format=pino", {"format": "zap"}, 422),  # given twice, differently
        ("format=pino", {"format": "pino"}, 202),  # twice, the same
        ("", {"format": "nope"}, 422),
        ("", {"service": "s" * 129}, 422),
        ("", {"environment": "qa", "service": "shop"}, 202),
    ],
)
async def test_upload_fields_before_the_file(alice, query, fields, status):
    response = await alice.post(
        f"/api/v1/files/upload?{query}", data=form_of([MYAPP_LINE], **fields)
    )
    assert response.status == status, await response.text()
