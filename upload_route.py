"""POST /api/v1/files/upload: the multipart body streamed to S3 as uploads.py checks it, every
read bounded by the idle timeout, then the queued job committed (jobs.create) and published.
What the headers tell is checked before a byte of the body is read."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import structlog
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry import trace
from psycopg.types.json import Jsonb

import amqp
import audit
import formats
import http_server
import jobs
import logs
import observe
import uploads
from api_state import POOL, PUBLISHER, S3, SETTINGS, UPLOAD_PATH, UPLOAD_SLOTS, actor, principal
from format_routes import find_format
from http_guard import (
    Problem,
    bind_job_id,
    check_body_not_compressed,
    content_codings,
    within_idle_timeout,
)

log = structlog.get_logger("api")
tracer = trace.get_tracer("eventhorizon.api")
routes = web.RouteTableDef()


READ_CHUNK_BYTES = 256 * 1024


MULTIPART_OVERHEAD_BYTES = 64 * 1024  # headers and boundaries around the file in the body


# The other fields of an upload's body, before the file and again after it: at most this many
# parts, and MULTIPART_OVERHEAD_BYTES of their headers and contents (see FieldBudget).
MAX_FIELDS = 16


UPLOAD_FIELDS = ("format", "service", "environment")  # fields read before the file, if given


UPLOAD_RETRY_AFTER_S = 5  # Retry-After of an upload refused for want of a slot (429, 503)


# What aiohttp raises on a malformed body (RuntimeError: an overlong `_charset_` field).
MULTIPART_ERRORS = (ValueError, HttpProcessingError, RuntimeError)


@routes.post(UPLOAD_PATH)
async def upload(request: web.Request) -> web.Response:
    """Stream a JSON-lines file (compressed or not) to S3, record a queued job, publish it,
    answer 202.

    What the headers tell is checked before a byte of the body is read: its type, that it is
    not compressed, its length, and that an upload slot is free (held until the answer,
    however the upload ends)."""
    settings = request.app[SETTINGS]
    if request.content_type != "multipart/form-data":
        raise Problem(
            415,
            "Unsupported Media Type",
            "send the file as multipart/form-data in a field named 'file'",
        )
    check_body_not_compressed(request.headers)
    if (request.content_length or 0) > settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES:
        raise uploads.UploadTooLarge(settings.max_upload_bytes)
    try:
        with request.app[UPLOAD_SLOTS].claim(principal(request).owner):
            return await receive_upload(request)
    except uploads.TooManyUploads as exc:
        raise no_upload_slot(exc) from None


async def receive_upload(request: web.Request) -> web.Response:
    """The body: the file part streamed to S3 as it is checked, every read bounded by the
    idle timeout; then the job, committed and published."""
    settings = request.app[SETTINGS]
    idle_s = settings.upload_idle_timeout_s
    reader, part, fields = await find_file_part(request, idle_s)
    file_name = part.filename or ""
    if bad := uploads.unprintable_character(file_name):
        raise Problem(
            422,
            "Unprocessable Content",
            f"the file name must be UTF-8 text without control or formatting "
            f"characters; it has {bad}",
        )
    compression = uploads.compression_of(file_name)
    check_part_not_encoded(part.headers)
    options = await upload_options(request, fields)
    if not await request.app[PUBLISHER].is_available():
        raise Problem(503, "Service Unavailable", "the message broker is unreachable; retry later")

    job_id = uuid.uuid4()
    bind_job_id(job_id)  # refused or not, the upload's lines name the id it was given
    log.info("upload.receiving", file_name=file_name[:255])
    key = uploads.object_key(job_id, compression)
    writer = uploads.ObjectWriter(request.app[S3], settings.s3_bucket, key)
    inspector = uploads.UploadInspector(settings.max_upload_bytes, compression)
    try:
        with observe.span(tracer, "s3.put", attributes={"s3.key": key}) as span:
            while chunk := await read_chunk(part, idle_s):
                inspector.feed(chunk)
                await writer.write(chunk)
            await read_to_the_closing_boundary(reader, idle_s)
            inspector.finish()
            await writer.close()
            span.set_attribute("size_bytes", inspector.size)
        job = await create_job(
            request.app, job_id, file_name, inspector, key, who=actor(request), options=options
        )
    except BaseException:
        await asyncio.shield(writer.abort())
        raise
    await publish_job(request.app, job)
    observe.UPLOAD_BYTES.inc(inspector.size)
    body = jobs.job_json(job)
    log.info(
        "job.queued",
        job_id=body["job_id"],
        size_bytes=inspector.size,
        lines_total=inspector.lines_total,
    )
    return web.json_response(
        body, status=202, headers={"Location": f"/api/v1/jobs/{body['job_id']}"}
    )


async def upload_options(request: web.Request, fields: dict[str, str]) -> dict[str, Any]:
    """The upload's `format` (`auto` by default, a built-in format's name or one of the
    owner's own, copied into the job), and the `service` and `environment` that lines whose
    format has none fall back to. Each as a field before the file or a query parameter."""
    name = upload_param(request, fields, "format") or formats.AUTO
    definition = None
    if name not in formats.NAMES:
        async with request.app[POOL].connection() as conn:
            row = await find_format(conn, principal(request).owner, name)
        if row is None:
            raise Problem(
                422,
                "Unprocessable Content",
                f"format must be one of {', '.join(formats.NAMES)} or one of your "
                f"formats (GET /api/v1/formats), got {name[:64]!r}",
            )
        definition = Jsonb(row["definition"])
    return {
        "format": name,
        "format_definition": definition,
        "default_service": upload_param(request, fields, "service"),
        "default_environment": upload_param(request, fields, "environment"),
    }


def upload_param(request: web.Request, fields: dict[str, str], name: str) -> str | None:
    """A field before the file, or else a query parameter (not both), of 1-128 characters of
    plain text."""
    value, query = fields.get(name), request.query.get(name)
    if value is not None and query is not None and value != query:
        raise Problem(
            422,
            "Unprocessable Content",
            f"{name} is given twice, as a field and in the query, differently",
        )
    value = query if value is None else value
    if value is not None and not 0 < len(value) <= 128:
        raise Problem(422, "Unprocessable Content", f"{name} must be 1 to 128 characters")
    if value is not None and (bad := uploads.unprintable_character(value)):
        raise Problem(
            422,
            "Unprocessable Content",
            f"{name} must be text without control or formatting characters; it has {bad}",
        )
    return value


async def find_file_part(request: web.Request, idle_s: float):
    """The multipart reader, its part named `file` and the upload's fields that came before
    it (`format`, `service`, `environment`); other fields are skipped. All within their
    FieldBudget."""
    budget = FieldBudget("before")
    fields: dict[str, str] = {}
    try:
        reader = await request.multipart()
        while (part := await within_idle_timeout(reader.next(), idle_s)) is not None:
            if isinstance(part, BodyPartReader) and part.name == "file":
                return reader, part, fields
            budget.add_part(part.headers)
            if isinstance(part, BodyPartReader) and part.name in UPLOAD_FIELDS:
                fields[part.name] = await read_field(part, budget, idle_s)
            else:
                await skip_part(part, budget, idle_s)
    except MULTIPART_ERRORS as exc:
        raise malformed_multipart(exc) from None
    raise Problem(422, "Unprocessable Content", "the multipart body has no field named 'file'")


async def read_field(part: BodyPartReader, budget: FieldBudget, idle_s: float) -> str:
    """A small text field's value, counted against the budget."""
    value = bytearray()
    while chunk := await within_idle_timeout(part.read_chunk(READ_CHUNK_BYTES), idle_s):
        budget.add_bytes(len(chunk))
        value += chunk
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(
            422, "Unprocessable Content", f"the field {part.name!r} is not UTF-8 text"
        ) from None


async def read_to_the_closing_boundary(reader, idle_s: float) -> None:
    """Skip the fields after the file, up to the body's closing boundary. A body cut short
    before it is refused: the file's last bytes could be missing, or be bytes of the body's
    framing that aiohttp handed over as the file's."""
    budget = FieldBudget("after")
    try:
        while (part := await within_idle_timeout(reader.next(), idle_s)) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValueError("a nested multipart part after the file")
            budget.add_part(part.headers)
            await skip_part(part, budget, idle_s)
    except MULTIPART_ERRORS as exc:
        raise malformed_multipart(exc) from None


async def skip_part(part, budget: FieldBudget, idle_s: float) -> None:
    """Read a field to the void, counting its bytes; a nested multipart part's own parts
    count as fields too."""
    if isinstance(part, BodyPartReader):
        while chunk := await within_idle_timeout(part.read_chunk(READ_CHUNK_BYTES), idle_s):
            budget.add_bytes(len(chunk))
        return
    while (inner := await within_idle_timeout(part.next(), idle_s)) is not None:
        budget.add_part(inner.headers)
        await skip_part(inner, budget, idle_s)


class FieldBudget:
    """What the fields before the file (or after it) may cost: MAX_FIELDS parts and
    MULTIPART_OVERHEAD_BYTES of their headers and contents.

    aiohttp parses each part on the event loop, so tens of thousands of tiny fields took
    seconds of it, and every other request (health checks too) waited that long. Past the
    budget the body is refused at once (400), its other parts never parsed.
    """

    def __init__(self, where: str):
        self.where = where  # "before" or "after" (the file)
        self.parts = 0
        self.bytes = 0

    def add_part(self, headers) -> None:
        self.parts += 1
        if self.parts > MAX_FIELDS:
            raise Problem(
                400, "Bad Request", f"more than {MAX_FIELDS} fields {self.where} the file"
            )
        self.add_bytes(sum(len(name) + len(value) + 4 for name, value in headers.items()))

    def add_bytes(self, count: int) -> None:
        self.bytes += count
        if self.bytes > MULTIPART_OVERHEAD_BYTES:
            raise Problem(
                400,
                "Bad Request",
                f"more than {uploads.in_binary_units(MULTIPART_OVERHEAD_BYTES)} "
                f"({MULTIPART_OVERHEAD_BYTES} bytes) of fields {self.where} the file",
            )


async def read_chunk(part, idle_s: float) -> bytes:
    try:
        return await within_idle_timeout(part.read_chunk(READ_CHUNK_BYTES), idle_s)
    except MULTIPART_ERRORS as exc:
        raise malformed_multipart(exc) from None


# Transfer encodings under which a part's bytes are the file's bytes (RFC 2045).
PLAIN_TRANSFER_ENCODINGS = frozenset({"", "7bit", "8bit", "binary"})


def check_part_not_encoded(headers) -> None:
    """415 for a file part with its own Content-Encoding or Content-Transfer-Encoding.

    read_chunk hands over a part's bytes as sent, never decoded (aiohttp's read(decode=True)
    would inflate them, past the limit), so a gzipped or base64 file would be stored as its
    encoding, not as the file: the stored file must be the bytes sent."""
    if codings := content_codings(headers):
        raise Problem(
            415,
            "Unsupported Media Type",
            f"the file part has Content-Encoding {codings!r}: send the file "
            "uncompressed, without Content-Encoding",
        )
    transfer = headers.get("Content-Transfer-Encoding", "").strip()
    if transfer.lower() not in PLAIN_TRANSFER_ENCODINGS:
        raise Problem(
            415,
            "Unsupported Media Type",
            f"the file part has Content-Transfer-Encoding {transfer!r}: send the "
            "file's bytes as they are (binary)",
        )


def no_upload_slot(exc: uploads.TooManyUploads) -> Problem:
    """429 when the owner has as many uploads running as one owner may, 503 when the process
    has as many as it takes; either way a Retry-After."""
    headers = {"Retry-After": str(UPLOAD_RETRY_AFTER_S)}
    if exc.per_owner:
        return Problem(
            429,
            "Too Many Requests",
            f"you have {exc.limit} uploads running, as many as one owner may at "
            "once; retry when one has finished",
            headers=headers,
        )
    return Problem(
        503,
        "Service Unavailable",
        f"the server is receiving {exc.limit} uploads, as many as it takes at once; "
        f"retry in {UPLOAD_RETRY_AFTER_S} seconds",
        headers=headers,
    )


def malformed_multipart(exc: Exception) -> Problem:
    """aiohttp's words for a malformed part's headers quote them: ours say what, not the bytes."""
    reason = http_server.parser_error_detail(exc) if isinstance(exc, HttpProcessingError) else exc
    return Problem(
        400, "Bad Request", f"the body is not well-formed multipart/form-data: {reason}"[:300]
    )


async def create_job(
    app: web.Application,
    job_id: uuid.UUID,
    file_name: str,
    inspector: uploads.UploadInspector,
    key: str,
    *,
    who: audit.Actor,
    options: dict[str, Any],
) -> jobs.Job:
    """The queued job row, its job.queued event and its audit.job.uploaded, in one
    transaction. The row keeps the upload's traceparent: the worker's span of the job
    continues the upload's trace."""
    settings = app[SETTINGS]
    traceparent = logs.current_traceparent()  # the request's span, not job.insert's
    with observe.span(tracer, "job.insert"):
        async with app[POOL].connection() as conn, conn.transaction():
            job = await jobs.create(
                conn,
                settings,
                job_id=job_id,
                file_name=file_name[:255],
                size_bytes=inspector.size,
                object_key=key,
                lines_total=inspector.lines_total,
                owner=who.actor,
                options=options,
                traceparent=traceparent,
                compression=inspector.compression,
            )
            await audit.arecord(
                conn,
                settings,
                "audit.job.uploaded",
                who,
                object_=job_id,
                file_name=job.file_name,
                size_bytes=job.size_bytes,
                format=job.format,
            )
            return job


async def publish_job(app: web.Application, job: jobs.Job) -> None:
    """Hand the job to the workers. The job is committed already: if this fails, the worker's
    reconciler re-publishes jobs left queued too long, so the upload is not lost."""
    with observe.span(tracer, "job.publish", kind=trace.SpanKind.PRODUCER) as span:
        try:
            await app[PUBLISHER].publish(jobs.message(job), job.traceparent)
        except amqp.BrokerUnavailable as exc:
            log.warning("job.publish_failed", job_id=str(job.job_id), error=str(exc))
            span.set_status(trace.StatusCode.ERROR, "the broker did not take the message")
