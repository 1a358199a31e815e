"""Upload streaming: the checks an upload passes while it streams, and its way into S3.

Knows nothing of HTTP. A file this service will not take is an `UploadRefused` (with the
status and the words the API answers it with); the API reads the request and maps the
refusal to application/problem+json. Also here: how many uploads may run at once
(`UploadSlots`), and the sweep of multipart uploads a dead API process left open in S3.
Used by eventhorizon.py, tested alone by tests/test_uploads.py and tests/test_abuse.py.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import datetime as dt
import json
import unicodedata
from collections.abc import Iterator

import structlog
from botocore.exceptions import ClientError

import decoding

log = structlog.get_logger("api")

UPLOADS_PREFIX = "uploads/"  # stored as uploads/<job_id>.jsonl (.jsonl.gz, .jsonl.zst)
PART_BYTES = 8 * 1024 * 1024  # S3 multipart part size (S3's minimum is 5 MiB)
FIRST_LINE_MAX_BYTES = 1024 * 1024
# A compressed upload's first line is looked for in this many of its first bytes at most.
COMPRESSED_HEAD_MAX_BYTES = 2 * FIRST_LINE_MAX_BYTES
UTF8_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------- refusals


class UploadRefused(Exception):
    """The uploaded file is not one this service takes; nothing of it may be kept.

    `status` is the HTTP status the API answers with (413 too large, 422 not JSON-lines
    text) and `detail` tells the uploader why, in words fit to show them.
    """

    status = 422

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class UploadTooLarge(UploadRefused):
    """The file is larger than the limit (EH_MAX_UPLOAD_BYTES): status 413. The detail
    names the limit in binary units and in bytes."""

    status = 413

    def __init__(self, max_bytes: int):
        super().__init__(
            f"the file is larger than the limit of {in_binary_units(max_bytes)} ({max_bytes} bytes)"
        )
        self.max_bytes = max_bytes


class NotJsonLines(UploadRefused):
    """The file is empty, binary, not UTF-8, or its first non-blank line is not a JSON
    object: status 422. Whatever follows the first line is the worker's to judge, line
    by line."""

    status = 422


class UnsupportedFileName(UploadRefused):
    """The file's name is not one this service takes (decoding.compression_of): status 415."""

    status = 415


def compression_of(file_name: str) -> str | None:
    """The compression the upload's name declares (gzip, zstd or None); UnsupportedFileName
    for a name not taken."""
    try:
        return decoding.compression_of(file_name)
    except ValueError as exc:
        raise UnsupportedFileName(str(exc)) from None


def object_key(job_id, compression: str | None) -> str:
    """Where a job's file is stored: uploads/<job_id>.jsonl, .jsonl.gz or .jsonl.zst."""
    return f"{UPLOADS_PREFIX}{job_id}{decoding.object_suffix(compression)}"


class TooManyUploads(Exception):
    """No upload slot is free: the owner has `limit` uploads running already (`per_owner`;
    the API answers 429), or the whole process has (503)."""

    def __init__(self, limit: int, *, per_owner: bool):
        super().__init__(f"{limit} uploads running" + (" for this owner" if per_owner else ""))
        self.limit, self.per_owner = limit, per_owner


def in_binary_units(n: int) -> str:
    """1073741824 -> '1 GiB', 1536 -> '1.5 KiB', 100 -> '100 bytes'."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


# --------------------------------------------------------------------------- checks


# Control (Cc: C0, DEL, C1) and format (Cf: the bidirectional overrides, isolates and marks,
# zero-width characters) characters, line and paragraph separators, and surrogates: a name
# with one may show as another (U+202E turns `gpj.jsonl` around) or break a log line.
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def unprintable_character(text: str) -> str | None:
    """The first character of `text` a name may not hold, named ("U+202E RIGHT-TO-LEFT
    OVERRIDE"); None if there is none. A surrogate is aiohttp's stand-in for a byte that
    was not UTF-8."""
    for char in text:
        category = unicodedata.category(char)
        if category in UNPRINTABLE_CATEGORIES:
            if category == "Cs":
                return "bytes that are not UTF-8"
            return f"U+{ord(char):04X} {unicodedata.name(char, 'a control character')}"
    return None


class UploadInspector:
    """Checks an upload while it streams: size limit, UTF-8 text, a JSON object first; counts lines.

    `feed` each chunk as it arrives, then `finish`; either raises UploadRefused as soon as
    the file is known to be wrong, so a wrong file is refused before it is all sent.

    A compressed upload (`compression`) is checked on its first bytes only: that they are
    that compression, and that the first line they decode to is a JSON object
    (decoding.decode_head, at most 1 MiB decoded, so bounded work on the event loop). Its
    lines are not counted here (`lines_total` 0): that would decode the whole file in the API,
    as much CPU as the worker spends on it, up to EH_MAX_DECODE_RATIO times each byte sent;
    the worker counts them as it decodes, and the total is set when the job completes.
    """

    def __init__(self, max_bytes: int, compression: str | None = None):
        self.max_bytes = max_bytes
        self.compression = compression
        self.encoded_head = bytearray()
        self.size = 0
        self.newlines = 0
        self.last_byte = b""
        self.head = bytearray()  # the start of the file, until its first non-blank line is seen
        self.bom_checked = False
        self.first_line_checked = False
        self.decoder = codecs.getincrementaldecoder("utf-8")()

    @property
    def lines_total(self) -> int:
        if self.compression:
            return 0  # counted by the worker as it decodes
        return self.newlines + (1 if self.size and self.last_byte != b"\n" else 0)

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise UploadTooLarge(self.max_bytes)
        if self.compression:
            self._inspect_compressed(chunk, final=False)
            return
        self._check_text(chunk)
        self.newlines += chunk.count(b"\n")
        self.last_byte = chunk[-1:]
        if not self.first_line_checked:
            self.head += chunk
            self._drop_leading_blanks()
            self._check_first_line(final=False)

    def finish(self) -> None:
        if self.compression:
            if not self.size:
                raise NotJsonLines("the file is empty")
            self._inspect_compressed(b"", final=True)
            return
        try:
            self.decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise NotJsonLines("the file ends in the middle of a UTF-8 character") from None
        if not self.first_line_checked:
            self._check_first_line(final=True)

    def _inspect_compressed(self, chunk: bytes, *, final: bool) -> None:
        if self.first_line_checked:
            return
        self.encoded_head += chunk[: COMPRESSED_HEAD_MAX_BYTES + 1 - len(self.encoded_head)]
        try:
            assert self.compression is not None  # only compressed uploads come here
            head, whole = decoding.decode_head(
                self.compression, bytes(self.encoded_head), FIRST_LINE_MAX_BYTES
            )
        except decoding.CorruptStream as exc:
            raise NotJsonLines(exc.reason) from None
        if b"\x00" in head:
            raise NotJsonLines("the decoded file contains NUL bytes: it looks binary")
        if b"\n" not in head and len(head) > FIRST_LINE_MAX_BYTES:
            raise NotJsonLines("the first line is longer than 1 MiB")
        self.head = bytearray(head)
        full = final or whole or len(self.encoded_head) > COMPRESSED_HEAD_MAX_BYTES
        self._check_first_line(final=full)
        if self.first_line_checked:
            self.encoded_head = bytearray()

    def _check_text(self, chunk: bytes) -> None:
        if b"\x00" in chunk:
            raise NotJsonLines("the file contains NUL bytes: it looks binary")
        try:
            self.decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise NotJsonLines(
                f"the file is not UTF-8 text (bad byte near offset "
                f"{self.size - len(chunk) + max(exc.start, 0)})"
            ) from None

    def _drop_leading_blanks(self) -> None:
        """Blank lines before the first entry are skipped, however many (the worker skips
        them too): only the first non-blank line counts against FIRST_LINE_MAX_BYTES."""
        if not self.bom_checked and len(self.head) >= len(UTF8_BOM):
            if self.head.startswith(UTF8_BOM):
                del self.head[: len(UTF8_BOM)]
            self.bom_checked = True
        if self.bom_checked and self.head[:1].isspace():
            self.head = bytearray(self.head.lstrip())

    def _check_first_line(self, *, final: bool) -> None:
        text = bytes(self.head).removeprefix(UTF8_BOM).lstrip()
        newline = text.find(b"\n")
        if newline < 0 and not final:
            if len(self.head) > FIRST_LINE_MAX_BYTES:
                raise NotJsonLines("the first line is longer than 1 MiB")
            return
        line = text if newline < 0 else text[:newline]
        if not line.strip():
            raise NotJsonLines("the file is empty")
        try:
            first = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise NotJsonLines(
                f"the first line is not JSON ({exc}); is this a JSON-lines file?"
            ) from None
        if not isinstance(first, dict):
            raise NotJsonLines(
                "the first line is not a JSON object; each line must be one log entry"
            )
        self.first_line_checked = True
        self.head = bytearray()


# --------------------------------------------------------------------------- slots


class UploadSlots:
    """How many uploads one API process receives at once, in all and per owner.

    Each running upload holds memory (up to one S3 part, see ObjectWriter) and an open S3
    multipart upload, so their number is what bounds the process's memory: past
    `max_uploads` in all, or `max_per_owner` for one owner (so that one owner cannot take
    every slot), an upload is refused before its body is read. Single-threaded (the event
    loop's), so plain counters.
    """

    def __init__(self, max_uploads: int, max_per_owner: int):
        self.max_uploads, self.max_per_owner = max_uploads, max_per_owner
        self.by_owner: collections.Counter[str] = collections.Counter()

    def running(self, owner: str | None = None) -> int:
        return self.by_owner[owner] if owner is not None else self.by_owner.total()

    @contextlib.contextmanager
    def claim(self, owner: str) -> Iterator[None]:
        """Hold a slot for one of `owner`'s uploads while the block runs, however it ends;
        TooManyUploads on entering if none is free."""
        if self.by_owner[owner] >= self.max_per_owner:
            raise TooManyUploads(self.max_per_owner, per_owner=True)
        if self.running() >= self.max_uploads:
            raise TooManyUploads(self.max_uploads, per_owner=False)
        self.by_owner[owner] += 1
        try:
            yield
        finally:
            self.by_owner[owner] -= 1
            if not self.by_owner[owner]:
                del self.by_owner[owner]


# --------------------------------------------------------------------------- storage


class ObjectWriter:
    """Streams bytes into one S3 object in parts, holding at most one part in memory (and the
    chunk that filled it: PART_BYTES plus one read, never a copy of the part).

    Small files go up in one PUT; larger ones as a multipart upload. `abort` removes whatever
    was stored, so a refused or interrupted upload leaves no object behind. boto3 blocks, so
    every call runs in a thread.
    """

    def __init__(self, s3, bucket: str, key: str):
        self.s3, self.bucket, self.key = s3, bucket, key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict] = []
        self.stored = False

    async def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= PART_BYTES:
            # The buffer itself goes up as the part, cut to size; what was read past it
            # starts the next one.
            part, self.buffer = self.buffer, self.buffer[PART_BYTES:]
            del part[PART_BYTES:]
            await self._upload_part(part)

    async def close(self) -> None:
        if self.upload_id is None:
            await asyncio.to_thread(
                self.s3.put_object,
                Bucket=self.bucket,
                Key=self.key,
                Body=self.buffer,
                ContentType="application/x-ndjson",
            )
        else:
            if self.buffer:
                await self._upload_part(self.buffer)
            await asyncio.to_thread(
                self.s3.complete_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        self.buffer = bytearray()
        self.stored = True

    async def abort(self) -> None:
        try:
            if self.stored:
                await asyncio.to_thread(self.s3.delete_object, Bucket=self.bucket, Key=self.key)
            elif self.upload_id is not None:
                await asyncio.to_thread(
                    self.s3.abort_multipart_upload,
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                )
        except Exception:
            log.exception("upload.cleanup_failed", key=self.key)

    async def _upload_part(self, data: bytearray) -> None:
        if self.upload_id is None:
            created = await asyncio.to_thread(
                self.s3.create_multipart_upload,
                Bucket=self.bucket,
                Key=self.key,
                ContentType="application/x-ndjson",
            )
            self.upload_id = created["UploadId"]
        number = len(self.parts) + 1
        # The thread pool's work item outlives the call a moment (on a busy machine, long
        # enough for the next part to fill): it holds this closure, and the closure gives
        # the part up as the upload starts, so two parts are never held at once.
        held = [data]
        del data

        def upload_part():
            return self.s3.upload_part(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=held.pop(),
            )

        result = await asyncio.to_thread(upload_part)
        self.parts.append({"PartNumber": number, "ETag": result["ETag"]})


def sweep_stale_uploads(s3, bucket: str, older_than_s: float) -> int:
    """Abort the S3 multipart uploads under uploads/ begun more than `older_than_s` seconds
    ago; return how many were aborted.

    An upload aborts its own multipart upload however it fails, but not when its API process
    dies (killed, out of memory, the machine gone): S3 then keeps the parts, invisible in
    object listings and stored forever. No upload runs for an hour at any sane speed, so the
    API sweeps those older than that (eventhorizon.STALE_UPLOAD_AGE_S). boto3 blocks: call
    this in a thread.
    """
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than_s)
    aborted = 0
    pages = s3.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix=UPLOADS_PREFIX
    )
    for page in pages:
        for upload in page.get("Uploads", []):
            if upload["Initiated"] <= cutoff and abort_multipart_upload(s3, bucket, upload):
                aborted += 1
    return aborted


def abort_multipart_upload(s3, bucket: str, upload: dict) -> bool:
    """Abort one listed multipart upload; False if it was gone already (completed, or
    another API process swept it first)."""
    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
            return False
        raise
    return True
