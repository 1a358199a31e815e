"""A job's uploaded file as the worker reads it from S3: from the job's checkpoint on (a
ranged read of a plain file; a compressed one decoded from its start and skipped to the
checkpoint), and, where a compressed stream breaks, the lines before the break and the reason
the job fails with."""

from __future__ import annotations

import io

import structlog
from botocore.exceptions import ClientError

import config
import decoding
import jobs
import lines

log = structlog.get_logger("worker")


def read_lines_until_broken(body, broken: list):
    """lines.read_lines of the job's stream; a compressed stream that cannot be decoded
    further (decoding.DecodeError) ends the lines there, and is appended to `broken`."""
    try:
        yield from lines.read_lines(body)
    except decoding.DecodeError as exc:
        log.warning("job.stream_broken", reason=exc.reason, decoded_offset=exc.offset)
        broken.append(exc)


def broken_stream_reason(exc: decoding.DecodeError, job: jobs.Job) -> str:
    """Why a compressed job failed and where: the decoded byte offset and the line."""
    return (
        f"{exc.reason}; it broke at decoded byte {exc.offset}, in line "
        f"{job.lines_processed + 1} (the {job.lines_processed} lines before it are "
        "stored)"
    )


def open_object(s3, job: jobs.Job, settings: config.Settings):
    """The job's object as a stream of its lines' bytes, from the checkpoint on: a plain
    object from the checkpoint's byte offset (a Range read); a compressed one decoded from
    its start (neither gzip nor zstd can start mid-stream), its first bytes_processed decoded
    bytes read and dropped."""
    if job.compression:
        stream = decoding.DecodedStream(
            get_object(s3, job),
            job.compression,
            max_decoded=settings.max_decoded_bytes,
            max_ratio=settings.max_decode_ratio,
        )
        try:
            stream.skip(job.bytes_processed)
        except decoding.DecodeError as exc:
            stream.close()
            raise jobs.JobFailed(broken_stream_reason(exc, job)) from None
        except BaseException:
            stream.close()
            raise
        return stream
    return get_object(s3, job, job.bytes_processed)


def get_object(s3, job: jobs.Job, offset: int = 0):
    """The job's stored object as a stream, from `offset` on."""
    kwargs = {"Bucket": job.bucket, "Key": job.object_key}
    if offset:
        kwargs["Range"] = f"bytes={offset}-"
    try:
        return s3.get_object(**kwargs)["Body"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "InvalidRange" and offset:
            # The checkpoint is at the end of the object: the last batch was committed, and
            # the worker stopped before it could mark the job completed. Nothing is left.
            return io.BytesIO(b"")
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            log.error("job.object_missing", bucket=job.bucket, key=job.object_key, code=code)
            raise jobs.JobFailed("the uploaded file is missing from storage") from exc
        raise
