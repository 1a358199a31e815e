"""The worker: turns each uploaded file into log entries, line errors and outbox events.

    python worker.py

A long-running RabbitMQ consumer (prefetch 1, manual ack). For each message it streams the
job's object from S3 line by line, validates every line against log_entry.schema.json and
writes the results to Postgres in batches. Each batch is one transaction that also moves the
job's checkpoint (lines and bytes done), so a redelivered job resumes where the last commit
left it and no line is written twice. The message is acked only after the final commit.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import dataclasses
import datetime as dt
import enum
import functools
import io
import json
import os
import random
import re
import signal
import sys
import threading
import time
import uuid
from json.encoder import encode_basestring_ascii as json_str
from typing import Any, Callable, Iterator

import jsonschema
import pika
import psycopg
import structlog
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from psycopg.rows import dict_row

import core

log = structlog.get_logger("worker")

MAX_LINE_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
FLUSH_EVERY_S = 1.0
RETRY_LATER_S = 10.0  # how long a duplicate of a job another worker holds waits
STOP_GRACE_S = 8.0  # after SIGTERM, how long a job may take to commit or abandon its batch
# Postgres errors that mean an outage, not a problem with the job: connection exceptions,
# insufficient resources (disk full, too many connections), transaction rollbacks
# (serialization failures, deadlocks), and the server shutting down or starting up.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "40"})
TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
MAX_REASON_CHARS = 500
NOT_UTF8 = "not valid UTF-8"
TOO_DEEP = "JSON nested too deeply (arrays or objects about a thousand levels deep)"
# An escape for NUL or for a surrogate (\ud800-\udfff): found in a line, its strings are
# checked (check_storable_strings).
SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
# The last dot (or escaped dot) of a key: found in a line, its context is checked
# (check_json_paths). A dot followed by plain characters, then a quote and a colon, can only be
# in a key; a dot followed by an escape might be, so it counts too (json.dumps escapes every
# non-ASCII character). Linear in the line's length: the possessive run stops at the next dot.
DOTTED_KEY = re.compile(r'(?:\.|\\u002[eE])[^".\\]*+(?:\\|"\s*:)')
KNOWN_FIELDS = frozenset(
    {"timestamp", "level", "service", "event_type", "message", "environment", "context"}
)
# What event_log.event_date_time (ClickHouse DateTime) holds; a line outside it is refused here
# rather than accepted and then refused by ClickHouse.
TIMESTAMP_MIN = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
TIMESTAMP_MAX = dt.datetime(2106, 2, 7, 6, 28, 15, tzinfo=dt.timezone.utc)


def main() -> int:
    settings = core.load_settings()
    core.configure_logging(settings)
    consumer = Consumer(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: consumer.stop(signal.Signals(signum).name))
    consumer.run()
    if consumer.job_thread is not None and consumer.job_thread.is_alive():
        # Stuck past the grace period (a dead connection, a hung read): leave now, as a crash
        # would; nothing was acked or committed that should not have been. Python would
        # otherwise wait for the job's commit thread at exit, for as long as it hangs.
        sys.stdout.flush()
        os._exit(0)
    return 0


# --------------------------------------------------------------------------- the consumer


class Outcome(enum.Enum):
    """What to tell RabbitMQ about a message once its work is over."""

    ACK = "ack"  # done (or nothing to do): forget the message
    REQUEUE = "requeue"  # not done, may succeed later: deliver it again
    RETRY_LATER = "retry_later"  # another worker is on the job: park it in the retry queue
    REJECT = "reject"  # can never succeed: dead-letter it


class Consumer:
    """Owns the pika connection on the main thread; each job runs on a thread of its own.

    Work runs off the I/O thread so heartbeats keep flowing during a long file, and the ack is
    handed back with `add_callback_threadsafe` (pika's threaded consumer example).
    """

    def __init__(self, settings: core.Settings):
        self.settings = settings
        self.s3 = core.s3_client(settings)
        self.stopping = threading.Event()
        self.job_thread: threading.Thread | None = None
        self.failures_in_a_row = 0
        self.stop_deadline = float("inf")

    def stop(self, reason: str = "requested") -> None:
        if not self.stopping.is_set():
            log.info("worker.stopping", reason=reason)
            self.stop_deadline = time.monotonic() + STOP_GRACE_S
        self.stopping.set()

    def run(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                self._consume()
                delay = 0.5
            except pika.exceptions.AMQPError as exc:
                log.warning("worker.broker_unavailable", error=repr(exc), retry_in_s=delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 30.0)
        log.info("worker.stopped")

    def _consume(self) -> None:
        connection = pika.BlockingConnection(core.amqp_parameters(self.settings, "worker"))
        try:
            channel = connection.channel()
            # The worker publishes too (a parked duplicate, a re-published lost job): the
            # broker confirms each message before the worker goes on, and acks the original.
            channel.confirm_delivery()
            core.declare_queues(channel, self.settings.queue)
            # One job at a time: a file takes long, and a second message would only wait
            # here while another worker could take it.
            channel.basic_qos(prefetch_count=1)
            channel.basic_consume(
                self.settings.queue, functools.partial(self._on_message, connection)
            )
            log.info("worker.consuming", queue=self.settings.queue)
            next_reconcile = time.monotonic()
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=0.5)
                if time.monotonic() >= next_reconcile:
                    self._reconcile(channel)
                    next_reconcile = time.monotonic() + max(1.0, self.settings.requeue_after_s / 2)
            self._wait_for_job(connection)
        finally:
            if connection.is_open:
                connection.close()

    def _on_message(self, connection, channel, method, _properties, body: bytes) -> None:
        self.job_thread = threading.Thread(
            target=self._work, args=(connection, channel, method.delivery_tag, body), name="job"
        )
        self.job_thread.start()

    def _work(self, connection, channel, delivery_tag: int, body: bytes) -> None:
        outcome = handle_message(body, self.settings, self.s3, self.stopping)
        if outcome is Outcome.REQUEUE and not self.stopping.is_set():
            self.failures_in_a_row += 1
            self.stopping.wait(min(2.0**self.failures_in_a_row, 30.0))
        elif outcome is not Outcome.REQUEUE:
            self.failures_in_a_row = 0
        try:
            connection.add_callback_threadsafe(
                functools.partial(settle, channel, delivery_tag, outcome, body, self.settings.queue)
            )
        except pika.exceptions.AMQPError:
            # The connection is gone: the broker redelivers the message, and the checkpoint
            # makes the second run pick up where this one committed.
            log.warning("worker.ack_lost", outcome=outcome.value)

    def _reconcile(self, channel) -> None:
        """Re-publish jobs whose message was lost (see requeue_lost_jobs)."""
        waiting = channel.queue_declare(self.settings.queue, passive=True).method.message_count
        try:
            # Short timeouts: this runs on the connection's thread, which must stay responsive
            # (heartbeats, a SIGTERM) while Postgres is away.
            with psycopg.connect(self.settings.database_url, autocommit=True,
                                 row_factory=dict_row, connect_timeout=2,
                                 options="-c statement_timeout=2000") as conn:
                requeue_lost_jobs(conn, channel, self.settings, queue_empty=waiting == 0)
        except psycopg.Error as exc:
            log.warning("reconciler.database_unavailable", error=str(exc))

    def _wait_for_job(self, connection) -> None:
        """On shutdown: let the job thread commit or abandon its batch, then send its ack."""
        if self.job_thread is None:
            return
        self.job_thread.join(timeout=max(0.0, self.stop_deadline - time.monotonic()))
        if self.job_thread.is_alive():
            log.warning("worker.job_still_running_at_exit")
        connection.process_data_events(time_limit=0)


def settle(channel, delivery_tag: int, outcome: Outcome, body: bytes, queue: str) -> None:
    if not channel.is_open:
        return
    if outcome is Outcome.ACK:
        channel.basic_ack(delivery_tag)
    elif outcome is Outcome.REJECT:
        channel.basic_reject(delivery_tag, requeue=False)
    elif outcome is Outcome.RETRY_LATER:
        park_for_retry(channel, queue, body)
        channel.basic_ack(delivery_tag)
    else:
        channel.basic_nack(delivery_tag, requeue=True)


def park_for_retry(channel, queue: str, body: bytes) -> None:
    """Publish a copy of the message to the retry queue, whence RabbitMQ moves it back to the
    job queue after RETRY_LATER_S; the caller then acks the original.

    For a duplicate of a job another worker holds. Requeued at once it would come straight
    back, and held here it would keep this worker from other jobs for as long as that job
    runs; yet it must not be dropped: should the holder's Postgres session outlive the holder
    (a lost host), the job's lock frees only later, and this copy is what finishes the job.
    The channel is in confirm mode, and the publish mandatory: it returns once the broker has
    the copy, and raises (the original then stays unacked) if it could not take it. Should this
    worker die between the publish and the ack, the job has one copy more, which the lock and
    the job's status absorb like any duplicate.
    """
    channel.basic_publish("", core.retry_queue(queue), body, pika.BasicProperties(
        content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
        expiration=str(int(RETRY_LATER_S * 1000))), mandatory=True)


def requeue_lost_jobs(conn, channel, settings: core.Settings, *, queue_empty: bool) -> int:
    """Publish again the jobs left `queued` longer than EH_REQUEUE_AFTER_S whose message
    cannot be waiting in the queue any more: it is empty, or a job uploaded more than
    EH_REQUEUE_AFTER_S after the job's last publish has started (so a busy queue does not
    hide a lost job).

    The API commits a job before it publishes the message; if it crashed in between, or the
    broker lost the message, the job would wait forever. A job published twice is still
    processed once: the worker claims it under a lock and skips finished jobs.
    """
    with conn.transaction():
        jobs = conn.execute(core.QUERIES["take_lost_jobs"],
                            {"after_s": settings.requeue_after_s,
                             "queue_empty": queue_empty}).fetchall()
        for job in jobs:
            channel.basic_publish("", settings.queue, core.job_message(job),
                                  pika.BasicProperties(content_type="application/json",
                                                       delivery_mode=pika.DeliveryMode.Persistent))
    if jobs:
        log.warning("reconciler.requeued", count=len(jobs),
                    job_ids=[str(j["job_id"]) for j in jobs])
    return len(jobs)


def handle_message(body: bytes, settings: core.Settings, s3, stop: threading.Event) -> Outcome:
    """Process one job message end to end and say what to do with the message."""
    structlog.contextvars.clear_contextvars()
    try:
        job_id = core.parse_job_message(body)
    except ValueError as exc:
        log.error("worker.poison_message", reason=str(exc), body_bytes=len(body))
        return Outcome.REJECT
    structlog.contextvars.bind_contextvars(job_id=str(job_id))
    try:
        with psycopg.connect(settings.database_url, autocommit=True, row_factory=dict_row,
                             connect_timeout=5) as conn:
            result = process_job(conn, s3, settings, job_id, stop)
    except UnknownJob:
        log.error("worker.unknown_job")
        return Outcome.REJECT
    except Exception as exc:
        log.exception("job.attempt_failed", counted=not is_transient(exc))
        return Outcome.REQUEUE
    if result == "busy":
        return Outcome.RETRY_LATER
    return Outcome.REQUEUE if result == "abandoned" else Outcome.ACK


def is_transient(exc: BaseException) -> bool:
    """Whether an attempt failed because a service was unreachable or overloaded (storage,
    the database), not because of the job: such a job is retried for as long as it takes,
    without counting toward EH_MAX_ATTEMPTS."""
    if isinstance(exc, ClientError):
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    if isinstance(exc, psycopg.OperationalError):
        # No SQLSTATE: the client lost or could not make the connection. Otherwise only what
        # says the server is away or short of resources, or asks for a retry; not, say, a
        # statement timeout or a program limit, which the same batch would hit every time.
        state = exc.sqlstate or ""
        return not state or state[:2] in TRANSIENT_SQLSTATE_CLASSES or state in TRANSIENT_SQLSTATES
    return isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError))


def record_attempt_error(settings: core.Settings, job_id: uuid.UUID, exc: Exception, *,
                         give_back: bool) -> None:
    """Best effort: show why the last attempt failed on the job while it waits for a retry,
    and give the attempt back if it was not the job's fault."""
    try:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(core.QUERIES["record_attempt_error"], {
                "job_id": job_id, "error": f"attempt failed, will retry: {exc}"[:MAX_REASON_CHARS]})
            if give_back:
                conn.execute(core.QUERIES["give_back_attempt"], {"job_id": job_id})
    except psycopg.Error:
        pass


# --------------------------------------------------------------------------- one job


class UnknownJob(Exception):
    """The message names a job that does not exist: a poison message."""


class JobFailed(Exception):
    """The job can never succeed; it ends `failed` with this message for the user."""


@dataclasses.dataclass
class Batch:
    """Results of consecutive lines not yet committed, and where the file stands after them."""

    entries: list[tuple] = dataclasses.field(default_factory=list)
    events: list[tuple] = dataclasses.field(default_factory=list)  # outbox rows
    errors: list[tuple] = dataclasses.field(default_factory=list)
    lines: int = 0
    bytes: int = 0


def process_job(conn, s3, settings: core.Settings, job_id: uuid.UUID,
                stop: threading.Event | None = None) -> str:
    """Process (or resume) one job.

    Returns "completed", "failed", "skipped" (already finished), "busy" (another worker is on
    it: its message must not be acked, in case that worker dies) or "abandoned" (stopped).

    `conn` is an autocommit connection: every unit of work below is an explicit transaction.
    The job's advisory lock, held on `conn` for the whole run, keeps a second worker off it.
    """
    stop = stop or threading.Event()
    if not conn.execute(core.QUERIES["try_lock_job"], {"job_id": job_id}).fetchone()["locked"]:
        log.info("job.busy", reason="another worker holds it")
        return "busy"
    try:
        job = claim_job(conn, settings, job_id)
        if job is None:
            return "skipped"
        try:
            if job["attempts"] > settings.max_attempts:
                raise JobFailed(f"gave up after {settings.max_attempts} attempts: {job['error']}")
            result = run_job(conn, s3, settings, job, stop)
        except JobFailed as exc:
            fail_job(conn, settings, job_id, str(exc))
            return "failed"
        except Exception as exc:  # this run took an attempt: say why it failed
            record_attempt_error(settings, job_id, exc, give_back=is_transient(exc))
            raise
        if result == "abandoned":  # a clean stop is not a failed attempt
            conn.execute(core.QUERIES["give_back_attempt"], {"job_id": job_id})
        return result
    finally:
        if not conn.closed:
            conn.execute(core.QUERIES["unlock_job"], {"job_id": job_id})


def claim_job(conn, settings: core.Settings, job_id: uuid.UUID) -> dict | None:
    """Mark the job processing; None if it is already finished. UnknownJob if there is none."""
    with conn.transaction():
        job = conn.execute(core.QUERIES["claim_job"], {"job_id": job_id}).fetchone()
        if job is None:
            existing = conn.execute(core.QUERIES["get_job"], {"job_id": job_id}).fetchone()
            if existing is None:
                raise UnknownJob(str(job_id))
            log.info("job.skipped", reason="already finished", status=existing["status"])
            return None
        if job["first_start"]:
            core.insert_event(conn, core.job_event("job.started", job,
                                                   environment=settings.environment))
        notify_job(conn, job)
    log.info("job.started", attempt=job["attempts"], resume_from_line=job["lines_processed"] + 1,
             lines_total=job["lines_total"])
    return job


def run_job(conn, s3, settings: core.Settings, job: dict, stop: threading.Event) -> str:
    """Stream the object from the checkpoint on, committing a batch at a time."""
    validator = log_entry_validator()
    event_id = core.line_event_ids(job["job_id"])
    started = time.monotonic()
    line_no = job["lines_processed"]
    marks = progress_marks(job["lines_total"], line_no)
    batch, last_flush = Batch(), time.monotonic()
    body = open_object(s3, job)
    committer = Committer(conn, job)
    try:
        for raw, size in read_lines(body):
            line_no += 1
            batch.lines += 1
            batch.bytes += size
            add_line(batch, job["job_id"], line_no, raw, validator, event_id)
            if settings.line_delay_max_s:
                stop.wait(random.uniform(0, settings.line_delay_max_s))
            if stop.is_set():
                job = committer.wait()
                log.info("job.abandoned", uncommitted_lines=batch.lines,
                         resume_from_line=job["lines_processed"] + 1)
                return "abandoned"
            at_mark = bool(marks) and line_no >= marks[0]
            if (at_mark or batch.lines >= settings.batch_lines
                    or time.monotonic() - last_flush >= FLUSH_EVERY_S):
                committer.submit(batch)
                batch, last_flush = Batch(), time.monotonic()
                marks = [m for m in marks if m > line_no]
        if batch.lines:
            committer.submit(batch)
        job = committer.wait()
    finally:
        committer.close()
        body.close()
    if is_not_text(conn, job):
        raise JobFailed("the file is not UTF-8 text")
    job = complete_job(conn, settings, job["job_id"])
    log.info("job.completed", lines=job["lines_processed"], valid=job["lines_valid"],
             invalid=job["lines_invalid"], seconds=round(time.monotonic() - started, 3))
    return "completed"


class Committer:
    """Commits batches on a second thread, so the next batch is parsed while Postgres works
    (psycopg releases the GIL while it waits). At most one batch is in flight and batches
    commit in order, each moving the checkpoint the previous one left."""

    def __init__(self, conn, job: dict):
        self.conn, self.job = conn, job
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="commit")
        self.in_flight: concurrent.futures.Future | None = None

    def submit(self, batch: Batch) -> None:
        self.wait()
        self.in_flight = self.executor.submit(write_batch, self.conn, self.job, batch)

    def wait(self) -> dict:
        """The job row as of the last committed batch (raises if that commit failed)."""
        if self.in_flight is not None:
            future, self.in_flight = self.in_flight, None
            self.job = future.result()
        return self.job

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def open_object(s3, job: dict):
    """The job's object as a stream, from the checkpoint's byte offset on."""
    kwargs = {"Bucket": job["bucket"], "Key": job["object_key"]}
    if job["bytes_processed"]:
        kwargs["Range"] = f"bytes={job['bytes_processed']}-"
    try:
        return s3.get_object(**kwargs)["Body"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "InvalidRange" and job["bytes_processed"]:
            # The checkpoint is at the end of the object: the last batch was committed, and
            # the worker stopped before it could mark the job completed. Nothing is left.
            return io.BytesIO(b"")
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise JobFailed(
                f"the uploaded file is missing from storage (s3://{job['bucket']}/{job['object_key']})"
            ) from exc
        raise


def progress_marks(total: int, done: int) -> list[int]:
    """Line numbers at each 10% of the file still ahead: a batch is committed at each one,
    so watchers see at least ten progress steps whatever the batch size."""
    return sorted({m for m in (-(-total * k // 10) for k in range(1, 10)) if m > done})


def is_not_text(conn, job: dict) -> bool:
    """True when no line was valid and every invalid line failed UTF-8 decoding."""
    if job["lines_valid"] or not job["lines_invalid"]:
        return False
    row = conn.execute(core.QUERIES["all_errors_are_encoding"], {"job_id": job["job_id"]}).fetchone()
    return bool(row["all_encoding"])


def write_batch(conn, job: dict, batch: Batch) -> dict:
    """Commit one batch: entries, outbox events, errors and the moved checkpoint, atomically."""
    job_id = job["job_id"]
    with conn.transaction(), conn.cursor() as cur:
        if batch.entries:
            with cur.copy(core.QUERIES["copy_log_entries"]) as copy:
                for row in batch.entries:
                    copy.write_row(row)
            core.copy_outbox_rows(cur, batch.events)
        if batch.errors:
            with cur.copy(core.QUERIES["copy_line_errors"]) as copy:
                for row in batch.errors:
                    copy.write_row(row)
        updated = cur.execute(core.QUERIES["record_batch"], {
            "job_id": job_id,
            "lines_processed": job["lines_processed"] + batch.lines,
            "bytes_processed": job["bytes_processed"] + batch.bytes,
            "valid": len(batch.entries),
            "invalid": len(batch.errors),
            "previous_lines": job["lines_processed"],
        }).fetchone()
        if updated is None:
            raise RuntimeError("the job's checkpoint moved under this worker; abandoning the batch")
        notify_job(cur, updated)
    return updated


def complete_job(conn, settings: core.Settings, job_id: uuid.UUID) -> dict:
    with conn.transaction(), conn.cursor() as cur:
        job = cur.execute(core.QUERIES["complete_job"], {"job_id": job_id}).fetchone()
        core.insert_event(cur, core.job_event("job.completed", job, environment=settings.environment))
        notify_job(cur, job)
    return job


def fail_job(conn, settings: core.Settings, job_id: uuid.UUID, error: str) -> None:
    with conn.transaction(), conn.cursor() as cur:
        job = cur.execute(core.QUERIES["fail_job"], {"job_id": job_id, "error": error}).fetchone()
        if job is None:
            return
        core.insert_event(cur, core.job_event("job.failed", job, environment=settings.environment))
        notify_job(cur, job)
    log.warning("job.failed", error=error)


def notify_job(conn_or_cur, job: dict) -> None:
    conn_or_cur.execute(core.QUERIES["notify_job"], {"payload": core.job_notification(job)})


# --------------------------------------------------------------------------- one line


def read_lines(stream, max_line_bytes: int = MAX_LINE_BYTES,
               chunk_size: int = READ_CHUNK_BYTES) -> Iterator[tuple[bytes | None, int]]:
    """Yield (line, size) for each physical line of a byte stream, in bounded memory.

    `size` counts the line's bytes including its newline, so the caller can keep a byte
    offset. A line longer than `max_line_bytes` is yielded as None and never held whole.
    """
    pending = bytearray()
    pending_size = 0
    too_long = False
    while chunk := stream.read(chunk_size):
        start = 0
        while (nl := chunk.find(b"\n", start)) >= 0:
            size = pending_size + nl - start + 1
            if too_long or size - 1 > max_line_bytes:
                yield None, size
            elif pending:
                yield bytes(pending) + chunk[start:nl], size
            else:
                yield chunk[start:nl], size
            pending.clear()
            pending_size = 0
            too_long = False
            start = nl + 1
        rest = len(chunk) - start
        if rest:
            pending_size += rest
            if pending_size > max_line_bytes:
                too_long = True
                pending.clear()
            elif not too_long:
                pending += chunk[start:]
    if pending_size:
        yield (None if too_long else bytes(pending)), pending_size


def add_line(batch: Batch, job_id: uuid.UUID, line_no: int, raw: bytes | None,
             validator, event_id: Callable[[int], str]) -> None:
    """Validate one line and put its result (entry + outbox event, or error) in the batch.

    This runs for every line of every file, so the event is built as a ready COPY row: the
    context is serialised once and spliced into the event's JSON.
    """
    if raw is None:
        batch.errors.append((job_id, line_no, f"line too long (over {MAX_LINE_BYTES} bytes)"))
        return
    if line_no == 1 and raw.startswith(codecs.BOM_UTF8):  # as Windows tools write it
        raw = raw[len(codecs.BOM_UTF8):]
    if not raw or raw.isspace():  # blank lines are skipped (isspace copies nothing)
        return
    try:
        entry = parse_line(raw, validator)
    except InvalidLine as exc:
        batch.errors.append((job_id, line_no, str(exc)))
        return
    except RecursionError:  # from json.loads, json.dumps or the walks over the value
        batch.errors.append((job_id, line_no, TOO_DEEP))
        return
    context_json = entry["context_json"]
    batch.entries.append((job_id, line_no, entry["timestamp"], entry["level"], entry["service"],
                          entry["event_type"], entry["environment"], entry["message"],
                          context_json))
    event_context = (
        f'{{"job_id": "{job_id}", "line_no": {line_no}, "level": {json_str(entry["level"])}, '
        f'"service": {json_str(entry["service"])}, "message": {json_str(entry["message"])}, '
        f'"context": {context_json}}}'
    )
    batch.events.append((event_id(line_no), entry["event_type"], entry["timestamp"],
                         entry["environment"], event_context, core.METADATA_VERSION))


class InvalidLine(Exception):
    """A line that is not a valid log entry; the message is the reason shown to the user."""

    def __init__(self, reason: str):
        super().__init__(reason[:MAX_REASON_CHARS])


def parse_line(raw: bytes, validator) -> dict[str, Any]:
    """One log entry from one line of bytes, normalised; InvalidLine says why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidLine(f"{NOT_UTF8} (byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidLine(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise InvalidLine(f"invalid JSON: {exc}") from None
    if not validator.is_valid(obj):
        raise InvalidLine(schema_error_reason(validator, obj))
    if SUSPECT_ESCAPE.search(text):
        check_storable_strings(obj)
    try:
        # RFC 3339 allows a lower-case t and z; Python 3.11's fromisoformat does not.
        timestamp = dt.datetime.fromisoformat(obj["timestamp"].upper())
    except ValueError as exc:
        raise InvalidLine(f"$.timestamp: not a valid date-time ({exc})") from None
    if not TIMESTAMP_MIN <= timestamp <= TIMESTAMP_MAX:
        raise InvalidLine(f"$.timestamp: {obj['timestamp']!r} is outside the range event_log "
                          "holds (1970-01-01T00:00:00Z to 2106-02-07T06:28:15Z)")
    context = obj.get("context", {})
    extra = {k: v for k, v in obj.items() if k not in KNOWN_FIELDS}
    if extra:
        context = {**context, free_key(context, "extra"): extra}
    if DOTTED_KEY.search(text):
        check_json_paths(context)
    try:
        context_json = json.dumps(context, allow_nan=False)
    except ValueError:
        raise InvalidLine("a number is NaN, Infinity or too large for a 64-bit float; JSON "
                          "has no such values and the database cannot store them") from None
    return {
        "timestamp": timestamp,
        "level": obj["level"].lower(),
        "service": obj["service"],
        "event_type": obj["event_type"],
        "environment": obj.get("environment", "production"),
        "message": obj["message"],
        "context": context,
        "context_json": context_json,
    }


def check_storable_strings(obj) -> None:
    """Refuse what JSON can escape but Postgres cannot store: a NUL character (\\u0000) or
    an unpaired surrogate (\\ud800) in any string, key or value. Only called for lines whose
    text holds such an escape (SUSPECT_ESCAPE), so ordinary lines never pay for the walk."""
    for text in strings_in(obj):
        if "\x00" in text:
            raise InvalidLine("a string holds a NUL character (\\u0000), which the database "
                              "cannot store")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidLine("a string holds an unpaired surrogate (such as \\ud800), which "
                              "is not a Unicode character") from None


def check_json_paths(context: dict) -> None:
    """Refuse a context in which two keys name the same path for ClickHouse's JSON type,
    which reads a dotted key as nested objects: {"a.b": 1, "a": {"b": 2}} names a.b twice,
    and event_log would refuse the event. A null or an empty object names no path; each
    object inside an array is a JSON value of its own, checked on its own.

    The paths go into a trie of their segments, so the check costs time and memory in
    proportion to the line, however long its keys (iteratively, however deep)."""
    objects = [context]
    while objects:
        taken: dict = {}  # segment -> subtrie; LEAF marks a value at that path
        pending = [(objects.pop(), taken, ())]
        while pending:
            value, trie, path = pending.pop()
            for key, item in value.items():
                node = trie
                for segment in key.split("."):
                    node = node.setdefault(segment, {})
                if isinstance(item, dict):
                    pending.append((item, node, (path, key)))
                    continue
                if item is None:
                    continue
                if LEAF in node:
                    raise InvalidLine(
                        f"$.context: two keys name the path {dotted(path, key)!r} (a dotted key "
                        "such as \"a.b\" means the same as \"a\": {\"b\": …}); the event "
                        "store cannot hold both")
                node[LEAF] = True
                if isinstance(item, list):
                    objects.extend(objects_in_array(item))


LEAF = object()  # a trie key no JSON key can equal


def dotted(path: tuple, key: str) -> str:
    """The dotted path of `key` under `path` ((…((), k1), k2)…), built only for a message."""
    keys = [key]
    while path:
        path, parent = path
        keys.append(parent)
    return ".".join(reversed(keys))


def objects_in_array(items: list) -> Iterator[dict]:
    """The objects in an array, at any depth of nested arrays."""
    arrays = [items]
    while arrays:
        for item in arrays.pop():
            if isinstance(item, dict):
                yield item
            elif isinstance(item, list):
                arrays.append(item)


def free_key(mapping: dict, key: str) -> str:
    """`key`, or `_key`, `__key`, … : the first that `mapping` does not have."""
    while key in mapping:
        key = f"_{key}"
    return key


def strings_in(obj) -> Iterator[str]:
    """Every string in a decoded JSON value: keys and values, at any depth (iteratively: a
    recursive generator would cost time in proportion to the depth for every string)."""
    pending = [obj]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            yield from value.keys()
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def schema_error_reason(validator, obj) -> str:
    """The most relevant schema error, put for a person: a pattern is explained by the
    property's description rather than shown as a regular expression."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error.validator == "pattern" and "description" in error.schema:
        return f"{error.json_path}: {error.instance!r} is not valid: {error.schema['description']}"
    return f"{error.json_path}: {error.message}"


@functools.cache
def log_entry_validator():
    """The compiled LogEntry validator (built once per process)."""
    schema = json.loads(core.LOG_ENTRY_SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


if __name__ == "__main__":
    raise SystemExit(main())
