"""Compressed uploads end to end, against the real services: a `.gz` or `.zst` file is stored
as sent and decoded by the worker while it streams; bombs stop at their limit in flat memory;
a truncated or corrupt stream fails its job saying where, after storing the lines before the
break exactly once, across crashes and redeliveries; a worker killed mid-file resumes inside a
compressed file. Names as they come are taken by the API."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import aiohttp
import psycopg
import pytest
import zstandard
from psycopg.rows import dict_row

import core
import job_file
import jobs
from helpers import (
    COMPRESS,
    VALID,
    StopAfter,
    assert_exactly_once,
    assert_stored_up_to_checkpoint,
    compressed_bomb,
    gz,
    job_message,
    job_row,
    jsonl,
    make_job,
    publish_to_queue,
    run_job,
    upload,
    wait_for,
    zst,
)
from processes import logged_events

GiB, MiB = 1024**3, 1024**2


SUFFIX = {"gzip": ".gz", "zstd": ".zst"}


def canonical_lines(n: int, start: int = 0) -> bytes:
    return jsonl(*[dict(VALID, message=f"m{i}") for i in range(start, start + n)])


def job_of(settings, job_id) -> jobs.Job:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        return jobs.query(conn, "get_job", {"job_id": job_id}).fetchone()


def complete_lines_before_break(data: bytes, compression: str) -> bytes:
    """The decoded bytes of a broken stream up to its last whole line: what must be stored."""
    if compression == "gzip":
        decoded = zlib_prefix(data)
    else:
        decoded = bytearray()
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data), read_across_frames=True
        )
        while chunk := reader.read(65536):
            decoded += chunk
    return bytes(decoded[: decoded.rfind(b"\n") + 1])


def zlib_prefix(data: bytes) -> bytes:
    import zlib

    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        return d.decompress(data)
    except zlib.error:
        return b""


# --------------------------------------------------------------------------- the API


@pytest.mark.parametrize(
    ("name", "compression"),
    [
        ("app.ndjson", None),
        ("app.json", None),
        ("app.log", None),
        ("app.log.1", None),
        ("app.log.2.gz", "gzip"),
        ("x.jsonl.zst", "zstd"),
    ],
)
async def test_names_as_they_come_are_stored_as_sent_and_decoded_by_the_worker(
    client, settings, db, name, compression
):
    content = canonical_lines(30) + b"{bad\n" + canonical_lines(20, 30)
    sent = COMPRESS[compression](content) if compression else content
    response = await upload(client, sent, name, content_type="application/octet-stream")
    assert response.status == 202, await response.text()
    body = await response.json()
    assert (body["file_name"], body["compression"], body["size_bytes"]) == (
        name,
        compression,
        len(sent),
    )
    assert body["lines_total"] == (0 if compression else 51)
    row = job_row(db, body["job_id"])
    stored = (
        core.s3_client(settings)
        .get_object(Bucket=settings.s3_bucket, Key=row["object_key"])["Body"]
        .read()
    )
    assert stored == sent  # never written decoded

    assert run_job(settings, row["job_id"]) == "completed"
    assert_exactly_once(db, row["job_id"], valid=50, invalid=1, content=content)
    done = jobs.job_json(job_of(settings, row["job_id"]))
    assert (done["lines_total"], done["progress"], done["compression"]) == (51, 1.0, compression)
    answered = await (await client.get(f"/api/v1/jobs/{body['job_id']}")).json()
    assert answered["compression"] == compression


@pytest.mark.parametrize(
    ("name", "content", "status", "detail"),
    [
        ("app.txt.gz", gz(jsonl(VALID)), 415, ".ndjson"),
        ("app.json", b'[{"a": 1}, {"b": 2}]\n', 422, "not a JSON object"),  # one array: not lines
        ("app.json.gz", gz(b'{\n  "a": 1\n}\n'), 422, "not JSON"),  # pretty-printed: not lines
        ("app.jsonl.gz", jsonl(VALID), 422, "not gzip"),
        ("app.jsonl.zst", jsonl(VALID), 422, "not zstd"),
        ("app.jsonl.gz", gz(b""), 422, "empty"),
        ("app.jsonl.zst", zst(b""), 422, "empty"),
        ("app.jsonl.gz", b"", 422, "empty"),
        ("app.jsonl.gz", gz(b'{"a": "' + b"x" * (2 * MiB) + b'"}\n'), 422, "longer than 1 MiB"),
        ("app.jsonl.zst", zst(b"[1, 2]\n" + jsonl(VALID)), 422, "not a JSON object"),
    ],
)
async def test_bad_compressed_uploads_are_refused_and_leave_nothing(
    client, settings, db, name, content, status, detail
):
    response = await upload(client, content, name, content_type="application/octet-stream")
    assert response.status == status, await response.text()
    assert detail in (await response.json())["detail"]
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0
    assert not core.s3_client(settings).list_objects_v2(Bucket=settings.s3_bucket).get("Contents")


async def test_a_content_encoding_is_still_415_whatever_the_name(client, db):
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(gz(jsonl(VALID))), filename="app.jsonl.gz")
    response = await client.post(
        "/api/v1/files/upload", data=form, headers={"Content-Encoding": "gzip"}
    )
    assert response.status == 415


# --------------------------------------------------------------------------- the worker


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_concatenated_members_and_a_2_mib_line_are_read_as_one_file(settings, db, compression):
    pack = COMPRESS[compression]
    long_line = b'{"a": "' + os.urandom(MiB).hex().encode() + b'"}\n'  # 2 MiB, hardly compressible
    first, rest = canonical_lines(10), canonical_lines(10, 10)
    job_id = make_job(
        settings, db, pack(first) + pack(long_line) + pack(rest), compression=compression
    )
    assert run_job(settings, job_id) == "completed"
    assert_exactly_once(db, job_id, valid=20, invalid=1)
    reason = db.execute("SELECT reason FROM line_errors WHERE job_id = %s", (job_id,)).fetchone()[
        "reason"
    ]
    assert reason.startswith("line too long") and job_row(db, job_id)["lines_total"] == 21


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_truncated_stream_fails_saying_where_after_storing_the_lines_before_it_once(
    settings, db, compression
):
    """Stopped after a few batches (as a redelivery would find it), then run to the break:
    the lines before it are stored exactly once and the job fails naming the decoded byte and
    the line. The same file run whole stores the same lines."""
    settings = dataclasses.replace(settings, batch_lines=50)
    content = canonical_lines(3000)
    data = COMPRESS[compression](content)
    data = data[: len(data) * 2 // 3]
    before = complete_lines_before_break(data, compression)
    assert 0 < before.count(b"\n") < 3000
    job_id = make_job(settings, db, data, compression=compression)

    assert run_job(settings, job_id, stop=StopAfter(400)) == "abandoned"
    assert 0 < job_row(db, job_id)["lines_processed"] < before.count(b"\n")
    assert run_job(settings, job_id) == "failed"
    job = job_row(db, job_id)
    n = before.count(b"\n")
    assert "truncated" in job["error"] and f"in line {n + 1}" in job["error"], job["error"]
    assert "at decoded byte" in job["error"]
    assert_exactly_once(db, job_id, valid=n, invalid=0, content=before)
    assert run_job(settings, job_id) == "skipped"


def test_a_corrupt_gzip_fails_saying_where(settings, db):
    content = canonical_lines(20000)
    data = bytearray(gz(content))
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64
    job_id = make_job(settings, db, bytes(data), compression="gzip")
    assert run_job(settings, job_id) == "failed"
    job = job_row(db, job_id)
    assert "corrupt" in job["error"] and "decoded byte" in job["error"], job["error"]
    assert 0 < job["lines_processed"] < 20000
    assert_exactly_once(
        db,
        job_id,
        valid=job["lines_processed"],
        invalid=0,
        content=content[: job["bytes_processed"]],
    )


def test_a_gz_that_is_not_gzip_fails_in_the_worker_too(settings, db):
    """Stored by hand (the API refuses it): the worker's own check."""
    job_id = make_job(settings, db, jsonl(VALID), compression="gzip")
    assert run_job(settings, job_id) == "failed"
    assert "gzip stream is corrupt" in job_row(db, job_id)["error"]


def test_the_decoded_size_limit_fails_the_job_naming_it(settings, db):
    settings = dataclasses.replace(settings, max_decoded_bytes=100_000, max_decode_ratio=0)
    job_id = make_job(settings, db, zst(canonical_lines(5000)), compression="zstd")
    assert run_job(settings, job_id) == "failed"
    job = job_row(db, job_id)
    assert "EH_MAX_DECODED_BYTES (100000 bytes)" in job["error"]
    assert job["bytes_processed"] <= 100_000 and job["lines_processed"] > 0


# --------------------------------------------------------------------------- the process


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize(
    ("compression", "bomb", "env", "limit"),
    [
        ("gzip", b"\n", {}, "EH_MAX_DECODE_RATIO (200)"),
        ("zstd", b"\n", {}, "EH_MAX_DECODE_RATIO (200)"),
        # No ratio limit: 512 MiB of one line decoded before the size limit stops it.
        (
            "zstd",
            b"x",
            {"EH_MAX_DECODE_RATIO": "0", "EH_MAX_DECODED_BYTES": str(512 * MiB)},
            "EH_MAX_DECODED_BYTES",
        ),
    ],
)
def test_a_1_gib_bomb_fails_its_job_naming_the_limit_in_flat_worker_memory(
    settings, db, start_process, compression, bomb, env, limit
):
    """1 GiB decoded from about 1 MiB (gzip) or less (zstd) sent, 16 members or frames of
    64 MiB. The worker's peak RSS (VmHWM) grows by far less than the 64 MiB or more a decoder
    without max_length would allocate at once."""
    data = compressed_bomb(compression, bomb)
    job_id = make_job(settings, db, data, compression=compression)
    proc = start_process("worker.py", **env)
    wait_for(lambda: logged_events(proc, "worker.consuming"), what="worker consuming")
    warm = make_job(settings, db, gz(canonical_lines(100)), compression="gzip")
    publish_to_queue(
        settings, job_message(db, warm)
    )  # imports and connections, before the baseline
    wait_for(lambda: job_row(db, warm)["status"] == "completed", what="warm-up job")
    baseline = vm_hwm_kib(proc.pid)

    publish_to_queue(settings, job_message(db, job_id))
    wait_for(lambda: job_row(db, job_id)["status"] == "failed", timeout=120, what="bomb failed")
    assert limit in job_row(db, job_id)["error"]
    growth_mib = (vm_hwm_kib(proc.pid) - baseline) / 1024
    assert growth_mib < 96, f"worker peak RSS grew by {growth_mib:.0f} MiB"


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_worker_killed_mid_file_resumes_inside_the_compressed_file(
    settings, db, start_process, compression
):
    """SIGKILLed after a commit in the middle of a compressed file (EH_WORKER_CRASH_AT), the
    next worker decodes from the start, skips the decoded bytes committed, and stores every
    line exactly once."""
    content = canonical_lines(150) + b"{bad\n" + canonical_lines(150, 150)
    job_id = make_job(settings, db, COMPRESS[compression](content), compression=compression)
    publish_to_queue(settings, job_message(db, job_id))
    crashing = start_process(
        "worker.py", EH_WORKER_CRASH_AT="after_commit:120", EH_BATCH_LINES="40"
    )
    assert crashing.wait(timeout=60) == -9
    job = assert_stored_up_to_checkpoint(db, job_id, content)
    assert job["status"] == "processing" and 120 <= job["lines_processed"] < 301

    start_process("worker.py", EH_BATCH_LINES="40")
    wait_for(lambda: job_row(db, job_id)["status"] == "completed", what="job completed")
    assert_exactly_once(db, job_id, valid=300, invalid=1, content=content)


def test_a_worker_killed_before_a_broken_stream_fails_it_once_on_redelivery(
    settings, db, start_process
):
    content = canonical_lines(400)
    data = gz(content)
    data = data[: len(data) * 3 // 4]
    before = complete_lines_before_break(data, "gzip")
    job_id = make_job(settings, db, data, compression="gzip")
    publish_to_queue(settings, job_message(db, job_id))
    crashing = start_process(
        "worker.py", EH_WORKER_CRASH_AT="after_commit:100", EH_BATCH_LINES="50"
    )
    assert crashing.wait(timeout=60) == -9
    start_process("worker.py", EH_BATCH_LINES="50")
    wait_for(lambda: job_row(db, job_id)["status"] == "failed", what="job failed")
    n = before.count(b"\n")
    assert f"in line {n + 1}" in job_row(db, job_id)["error"]
    assert_exactly_once(db, job_id, valid=n, invalid=0, content=before)


def test_the_worker_reads_a_plain_job_as_before(settings, db):
    """A job without compression still resumes with a Range read (the checkpoint in bytes)."""
    settings = dataclasses.replace(settings, batch_lines=7)
    content = canonical_lines(100)
    job_id = make_job(settings, db, content)
    assert run_job(settings, job_id, stop=StopAfter(30)) == "abandoned"
    with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
        job = jobs.query(conn, "get_job", {"job_id": job_id}).fetchone()
    body = job_file.open_object(core.s3_client(settings), job, settings)
    assert body.read() == content[job.bytes_processed :]
    assert json.loads(content.splitlines()[0])["message"] == "m0"
