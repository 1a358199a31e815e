"""The worker: turns each uploaded file into log entries, line errors and outbox rows.

    python worker.py

A long-running RabbitMQ consumer (prefetch 1, manual ack). For each message it streams the
job's object from S3 line by line, validates every line against log_entry.schema.json and
writes the results to Postgres in batches. Each batch is one transaction that also moves the
job's checkpoint (lines and bytes done), so a redelivered job resumes where the last commit
left it and no line is written twice. The message is acked only after the final commit.

Fault injection, for tests only: EH_WORKER_CRASH_AT makes the process SIGKILL itself in the
middle of a batch (before_commit:N), just after one (after_commit:N) or between a job's final
commit and its ack (before_ack); see crash_if.
"""

from __future__ import annotations

import concurrent.futures
import enum
import functools
import math
import os
import random
import signal
import sys
import threading
import time
import uuid

import pika
import psycopg
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from psycopg.rows import dict_row

import amqp
import config
import core
import decoding
import formats
import job_file
import jobs
import lines
import logs
import mappings
import observe
import outbox
import stopping

log = structlog.get_logger("worker")
tracer = trace.get_tracer("eventhorizon.worker")

FLUSH_EVERY_S = 1.0
VALID_LINES, INVALID_LINES = observe.LINES.labels("valid"), observe.LINES.labels("invalid")


def main() -> int:
    settings = config.load_settings()
    logs.configure_logging(settings)
    serve_metrics(settings)
    provider = observe.setup_tracing(settings, "eventhorizon-worker")
    # A job stuck past the grace (a dead connection, a hung read) is left as a crash would
    # leave it: nothing was acked or committed that should not have been.
    stop = stopping.Stopper(
        "worker",
        settings.stop_grace_s,
        before_exit=lambda: provider.force_flush(timeout_millis=1000),
    )
    stop.install()
    Consumer(settings, stop).run()
    stop.close()
    return 0


def serve_metrics(settings: config.Settings) -> None:
    """/metrics on EH_METRICS_HOST:WORKER_METRICS_PORT (0: none), from a daemon thread."""
    try:
        port = observe.serve_metrics(observe.WORKER, settings, settings.worker_metrics_port)
    except OSError as exc:
        sys.exit(
            f"cannot serve metrics on {settings.metrics_host}:"
            f"{settings.worker_metrics_port} (WORKER_METRICS_PORT): {exc}"
        )
    if port:
        log.info("worker.metrics_serving", host=settings.metrics_host, port=port)


# --------------------------------------------------------------------------- the consumer


class Outcome(enum.Enum):
    """What to tell RabbitMQ about a message once its work is over."""

    ACK = "ack"  # done (or nothing to do): forget the message
    REQUEUE = "requeue"  # not done, may succeed later: deliver it again
    RETRY_LATER = "retry_later"  # another worker is on the job: park it in the retry queue
    REJECT = "reject"  # can never succeed: dead-letter it


class JobRun(enum.StrEnum):
    """How one run of process_job ended."""

    COMPLETED = "completed"
    FAILED = "failed"  # can never succeed: marked failed, with the reason
    SKIPPED = "skipped"  # finished already
    BUSY = "busy"  # another worker holds it: its message must not be dropped, in case it dies
    ABANDONED = "abandoned"  # stopped (SIGTERM) after its last commit: resumes from there


# What becomes of the message once a run ended that way.
OUTCOME_OF_RUN = {
    JobRun.COMPLETED: Outcome.ACK,
    JobRun.FAILED: Outcome.ACK,
    JobRun.SKIPPED: Outcome.ACK,
    JobRun.BUSY: Outcome.RETRY_LATER,
    JobRun.ABANDONED: Outcome.REQUEUE,
}


class Consumer:
    """Owns the pika connection on the main thread; each job runs on a thread of its own.

    Work runs off the I/O thread so heartbeats keep flowing during a long file, and the ack is
    handed back with `add_callback_threadsafe` (pika's threaded consumer example).
    """

    def __init__(self, settings: config.Settings, stop: stopping.Stopper):
        self.settings = settings
        self.s3 = core.s3_client(settings)
        self.stopping = stop
        self.job_thread: threading.Thread | None = None
        self.job_backoff = core.Backoff(first=2.0, cap=30.0)  # between failed attempts

    def run(self) -> None:
        backoff = core.Backoff()
        while not self.stopping.is_set():
            try:
                self._consume()
                backoff.reset()
            except pika.exceptions.AMQPError as exc:
                delay = backoff.next()
                log.warning("worker.broker_unavailable", error=repr(exc), retry_in_s=delay)
                self.stopping.wait(delay)
        log.info("worker.stopped")

    def _consume(self) -> None:
        connection = pika.BlockingConnection(amqp.amqp_parameters(self.settings, "worker"))
        try:
            channel = connection.channel()
            # The worker publishes too (a parked duplicate, a re-published lost job): the
            # broker confirms each message before the worker goes on, and acks the original.
            channel.confirm_delivery()
            amqp.declare_queues(channel, self.settings.queue)
            # One job at a time: a file takes long, and a second message would only wait
            # here while another worker could take it.
            channel.basic_qos(prefetch_count=1)
            channel.basic_consume(
                self.settings.queue, functools.partial(self._on_message, connection)
            )
            log.info(
                "worker.consuming",
                queue=self.settings.queue,
                fault_injection=self.settings.worker_crash_at or None,
            )
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

    def _on_message(self, connection, channel, method, properties, body: bytes) -> None:
        self.job_thread = threading.Thread(
            target=self._work,
            args=(connection, channel, method.delivery_tag, body, properties.headers or {}),
            name="job",
        )
        self.job_thread.start()

    def _work(self, connection, channel, delivery_tag: int, body: bytes, headers: dict) -> None:
        outcome = handle_message(body, self.settings, self.s3, self.stopping, headers)
        if outcome is Outcome.ACK:
            crash_if(self.settings, "before_ack")
        if outcome is Outcome.REQUEUE and not self.stopping.is_set():
            self.stopping.wait(self.job_backoff.next())
        elif outcome is not Outcome.REQUEUE:
            self.job_backoff.reset()
        try:
            connection.add_callback_threadsafe(
                functools.partial(
                    settle,
                    channel,
                    delivery_tag,
                    outcome,
                    body,
                    self.settings,
                    headers.get("traceparent"),
                )
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
            with psycopg.connect(
                self.settings.database_url,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=2,
                options="-c statement_timeout=2000",
            ) as conn:
                requeue_lost_jobs(conn, channel, self.settings, queue_empty=waiting == 0)
        except psycopg.Error as exc:
            log.warning("reconciler.database_unavailable", error=str(exc))

    def _wait_for_job(self, connection) -> None:
        """On shutdown: let the job thread commit or abandon its batch, then send its ack
        (past EH_STOP_GRACE_S the Stopper leaves without them)."""
        if self.job_thread is None:
            return
        self.job_thread.join()
        connection.process_data_events(time_limit=0)


def settle(
    channel,
    delivery_tag: int,
    outcome: Outcome,
    body: bytes,
    settings: config.Settings,
    traceparent: str | None = None,
) -> None:
    if not channel.is_open:
        return
    if outcome is Outcome.ACK:
        channel.basic_ack(delivery_tag)
    elif outcome is Outcome.REJECT:
        channel.basic_reject(delivery_tag, requeue=False)
    elif outcome is Outcome.RETRY_LATER:
        park_for_retry(channel, settings, body, traceparent)
        channel.basic_ack(delivery_tag)
    else:
        channel.basic_nack(delivery_tag, requeue=True)


def park_for_retry(
    channel, settings: config.Settings, body: bytes, traceparent: str | None = None
) -> None:
    """Publish a copy of the message to the retry queue, whence RabbitMQ moves it back to the
    job queue after EH_RETRY_LATER_S; the caller then acks the original.

    For a duplicate of a job another worker holds. Requeued at once it would come straight
    back, and held here it would keep this worker from other jobs for as long as that job
    runs; yet it must not be dropped: should the holder's Postgres session outlive the holder
    (a lost host), the job's lock frees only later, and this copy is what finishes the job.
    The channel is in confirm mode, and the publish mandatory: it returns once the broker has
    the copy, and raises (the original then stays unacked) if it could not take it. Should this
    worker die between the publish and the ack, the job has one copy more, which the lock and
    the job's status absorb like any duplicate. The copy keeps the original's traceparent.
    """
    channel.basic_publish(
        "",
        amqp.retry_queue(settings.queue),
        body,
        amqp.message_properties(expiration_s=settings.retry_later_s, traceparent=traceparent),
        mandatory=True,
    )


def requeue_lost_jobs(conn, channel, settings: config.Settings, *, queue_empty: bool) -> int:
    """Publish again the jobs left `queued` longer than EH_REQUEUE_AFTER_S whose message
    cannot be waiting in the queue any more: it is empty, or a job uploaded more than
    EH_REQUEUE_AFTER_S after the job's last publish has started (so a busy queue does not
    hide a lost job).

    The API commits a job before it publishes the message; if it crashed in between, or the
    broker lost the message, the job would wait forever. A job published twice is still
    processed once: the worker claims it under a lock and skips finished jobs.
    """
    with conn.transaction():
        lost = jobs.take_lost(conn, after_s=settings.requeue_after_s, queue_empty=queue_empty)
        for job in lost:
            channel.basic_publish(
                "",
                settings.queue,
                jobs.message(job),
                amqp.message_properties(traceparent=job.traceparent),
            )
    if lost:
        log.warning("reconciler.requeued", count=len(lost), job_ids=[str(j.job_id) for j in lost])
    return len(lost)


def handle_message(
    body: bytes, settings: config.Settings, s3, stop: stopping.Stop, headers: dict | None = None
) -> Outcome:
    """Process one job message end to end and say what to do with the message. Its span
    continues the trace of the message's `traceparent` header (the upload's), if any."""
    structlog.contextvars.clear_contextvars()
    try:
        job_id = jobs.parse_message(body)
    except ValueError as exc:
        log.error("worker.poison_message", reason=str(exc), body_bytes=len(body))
        return Outcome.REJECT
    structlog.contextvars.bind_contextvars(job_id=str(job_id))
    parent = propagate.extract(headers or {})
    with observe.span(
        tracer,
        "job",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={"job.id": str(job_id)},
    ):
        return run_message(job_id, settings, s3, stop)


def run_message(job_id: uuid.UUID, settings: config.Settings, s3, stop: stopping.Stop) -> Outcome:
    """Run the job (in the job's span) and say what to do with its message; an attempt that
    raised is recorded on the span, which it marks as an error."""
    try:
        with psycopg.connect(
            settings.database_url,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=5,
            application_name=core.process_name("worker"),
        ) as conn:
            result = process_job(conn, s3, settings, job_id, stop)
    except jobs.UnknownJob:
        log.error("worker.unknown_job")
        return Outcome.REJECT
    except Exception as exc:
        # An outage (core.is_outage) does not count toward EH_MAX_ATTEMPTS: the job waits it out.
        log.exception("job.attempt_failed", counted=not core.is_outage(exc))
        observe.record_failure(
            trace.get_current_span(), exc, f"the attempt failed, will retry: {in_plain_words(exc)}"
        )
        observe.JOBS.labels("error").inc()
        return Outcome.REQUEUE
    observe.JOBS.labels(result.value).inc()
    return OUTCOME_OF_RUN[result]


def in_plain_words(exc: BaseException) -> str:
    """Why an attempt failed, for the job's owner: no endpoints, hosts or exception text
    (those are in the worker's log, next to the job id)."""
    if isinstance(exc, psycopg.Error):
        return "the database was unreachable" if core.is_outage(exc) else "a database error"
    if core.is_outage(exc):
        return "the file storage was unreachable"
    return "an unexpected error in the worker"


def record_attempt_error(
    settings: config.Settings, job_id: uuid.UUID, exc: Exception, *, give_back: bool
) -> None:
    """Best effort: show why the last attempt failed on the job while it waits for a retry,
    and give the attempt back if it was not the job's fault."""
    try:
        with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=5) as conn:
            jobs.record_attempt_error(
                conn, job_id, f"attempt failed, will retry: {in_plain_words(exc)}"
            )
            if give_back:
                jobs.give_back_attempt(conn, job_id)
    except psycopg.Error:
        pass


# --------------------------------------------------------------------------- one job


def process_job(
    conn, s3, settings: config.Settings, job_id: uuid.UUID, stop: stopping.Stop | None = None
) -> JobRun:
    """Process (or resume) one job, and say how the run ended (JobRun).

    `conn` is an autocommit connection: every unit of work below is an explicit transaction.
    The job's advisory lock, held on `conn` for the whole run, keeps a second worker off it.
    """
    stop = stop or threading.Event()
    if not jobs.try_lock(conn, job_id):
        log.info("job.busy", reason="another worker holds it")
        return JobRun.BUSY
    try:
        job = claim_job(conn, settings, job_id)
        if job is None:
            return JobRun.SKIPPED
        try:
            if job.attempts > settings.max_attempts:
                raise jobs.JobFailed(f"gave up after {settings.max_attempts} attempts: {job.error}")
            result = run_job(conn, s3, settings, job, stop)
        except jobs.JobFailed as exc:
            fail_job(conn, settings, job_id, str(exc))
            return JobRun.FAILED
        except Exception as exc:  # this run took an attempt: say why it failed
            record_attempt_error(settings, job_id, exc, give_back=core.is_outage(exc))
            raise
        if result is JobRun.ABANDONED:  # a clean stop is not a failed attempt
            jobs.give_back_attempt(conn, job_id)
        return result
    finally:
        if not conn.closed:
            jobs.unlock(conn, job_id)


def claim_job(conn, settings: config.Settings, job_id: uuid.UUID) -> jobs.Job | None:
    """Mark the job processing; None if it is already finished or was deleted.
    jobs.UnknownJob if there is no such job and never was."""
    with conn.transaction():
        job = jobs.claim(conn, settings, job_id)
    if job is None:
        return None
    log.info(
        "job.started",
        attempt=job.attempts,
        resume_from_line=job.lines_processed + 1,
        lines_total=job.lines_total,
    )
    return job


def run_job(conn, s3, settings: config.Settings, job: jobs.Job, stop: stopping.Stop) -> JobRun:
    """Stream the object from the checkpoint on, committing a batch at a time."""
    validator = lines.log_entry_validator()
    mapping = compile_format(job)
    started = time.monotonic()
    line_no = job.lines_processed
    marks = progress_marks(job.lines_total, line_no)
    batch, last_flush = lines.LineBatch(), time.monotonic()
    body = job_file.open_object(s3, job, settings)
    committer = Committer(conn, job, settings)
    broken: list[decoding.DecodeError] = []  # where a compressed stream broke, if it did
    # Locals: this loop runs once per line, and a global or attribute look-up each time adds up.
    add_line, stopped, monotonic = lines.add_line, stop.is_set, time.monotonic
    job_id, max_paths, delay_max_s = (
        job.job_id,
        settings.max_context_paths,
        settings.line_delay_max_s,
    )
    batch_lines, next_mark = settings.batch_lines, marks[0] if marks else math.inf
    batch_size = 0  # lines in the batch (batch.lines, kept here while it fills)
    try:
        for raw, size, count in job_file.read_lines_until_broken(body, broken):
            line_no += count
            batch_size += count
            batch.bytes += size
            if count == 1:  # (a run of empty lines has nothing to add)
                add_line(batch, job_id, line_no, raw, validator, mapping, max_paths)
            if delay_max_s:
                stop.wait(random.uniform(0, delay_max_s))
            if stopped():
                job = committer.wait()
                log.info(
                    "job.abandoned",
                    uncommitted_lines=batch_size,
                    resume_from_line=job.lines_processed + 1,
                )
                return JobRun.ABANDONED
            if (
                line_no >= next_mark
                or batch_size >= batch_lines
                or monotonic() - last_flush >= FLUSH_EVERY_S
            ):
                batch.lines = batch_size
                committer.submit(batch)
                batch, batch_size, last_flush = lines.LineBatch(), 0, monotonic()
                marks = [m for m in marks if m > line_no]
                next_mark = marks[0] if marks else math.inf
        batch.lines = batch_size
        if batch.lines:
            committer.submit(batch)
        job = committer.wait()
    finally:
        committer.close()
        body.close()
    if broken:  # the lines before the break are committed: now the job fails
        raise jobs.JobFailed(job_file.broken_stream_reason(broken[0], job))
    if is_not_text(conn, job):
        raise jobs.JobFailed("the file is not UTF-8 text")
    job = complete_job(conn, settings, job.job_id)
    seconds = time.monotonic() - started
    observe.JOB_DURATION.observe(seconds)
    log.info(
        "job.completed",
        lines=job.lines_processed,
        valid=job.lines_valid,
        invalid=job.lines_invalid,
        seconds=round(seconds, 3),
    )
    return JobRun.COMPLETED


def compile_format(job: jobs.Job) -> lines.Mapping:
    """The job's log format (a custom one as it was when the job was uploaded), compiled once
    for all its lines; a format that cannot be used fails the job (it can never succeed)."""
    try:
        return mappings.compile_format(
            job.format, job.default_service, job.default_environment, job.format_definition
        )
    except mappings.UnknownFormat as exc:
        raise jobs.JobFailed(str(exc)) from None
    except formats.InvalidFormat as exc:
        raise jobs.JobFailed(f"log format {job.format!r} cannot be used: {exc}"[:500]) from None


class Committer:
    """Commits batches on a second thread, so the next batch is parsed while Postgres works
    (psycopg releases the GIL while it waits). At most one batch is in flight and batches
    commit in order, each moving the checkpoint the previous one left."""

    def __init__(self, conn, job: jobs.Job, settings: config.Settings):
        self.conn, self.job, self.settings = conn, job, settings
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="commit")
        self.in_flight: concurrent.futures.Future | None = None
        self.trace_context = otel_context.get_current()  # the job's span, for each batch's
        self.trace_id = logs.current_trace_id()  # the job's trace (its upload's): its events'

    def submit(self, batch: lines.LineBatch) -> None:
        self.wait()
        self.in_flight = self.executor.submit(self._commit, self.job, batch)

    def _commit(self, job: jobs.Job, batch: lines.LineBatch) -> jobs.Job:
        with observe.span(
            tracer,
            "job.batch",
            context=self.trace_context,
            attributes={
                "lines": batch.lines,
                "valid": len(batch.entries),
                "invalid": len(batch.errors),
            },
        ):
            updated = write_batch(self.conn, job, batch, self.settings, self.trace_id)
        VALID_LINES.inc(len(batch.entries))  # committed: now they count
        INVALID_LINES.inc(len(batch.errors))
        crash_if(self.settings, "after_commit", updated.lines_processed)
        return updated

    def wait(self) -> jobs.Job:
        """The job row as of the last committed batch (raises if that commit failed)."""
        if self.in_flight is not None:
            future, self.in_flight = self.in_flight, None
            self.job = future.result()
        return self.job

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def progress_marks(total: int, done: int) -> list[int]:
    """Line numbers at each 10% of the file still ahead: a batch is committed at each one,
    so watchers see at least ten progress steps whatever the batch size."""
    return sorted({m for m in (-(-total * k // 10) for k in range(1, 10)) if m > done})


def is_not_text(conn, job: jobs.Job) -> bool:
    """True when no line was valid and every invalid line failed UTF-8 decoding."""
    if job.lines_valid or not job.lines_invalid:
        return False
    row = conn.execute(
        core.QUERIES["all_errors_are_encoding"],
        {"job_id": job.job_id, "reason_prefix": lines.NOT_UTF8},
    ).fetchone()
    return bool(row["all_encoding"])


def write_batch(
    conn,
    job: jobs.Job,
    batch: lines.LineBatch,
    settings: config.Settings,
    trace_id: str | None = None,
) -> jobs.Job:
    """Commit one batch atomically: entries, errors, the moved checkpoint and, for the
    entries' events, one outbox row naming the batch's line range (`trace_id`: the trace the
    events name)."""
    with conn.transaction(), conn.cursor() as cur:
        if batch.entries:
            core.copy_entries(cur, batch.entries)
            outbox.insert_line_range(
                cur,
                job.job_id,
                batch.entries[0][1],
                batch.entries[-1][1],
                len(batch.entries),
                trace_id,
            )
        if batch.errors:
            with cur.copy(core.QUERIES["copy_line_errors"]) as copy:
                for row in batch.errors:
                    copy.write_row(row)
        updated = jobs.advance(
            conn,
            job,
            lines=batch.lines,
            bytes_=batch.bytes,
            valid=len(batch.entries),
            invalid=len(batch.errors),
            formats_seen=batch.formats,
        )
        crash_if(settings, "before_commit", updated.lines_processed)
    return updated


def complete_job(conn, settings: config.Settings, job_id: uuid.UUID) -> jobs.Job:
    with conn.transaction():
        return jobs.complete(conn, settings, job_id)


def fail_job(conn, settings: config.Settings, job_id: uuid.UUID, error: str) -> None:
    trace.get_current_span().set_status(trace.StatusCode.ERROR, error)
    with conn.transaction():
        job = jobs.fail(conn, settings, job_id, error)
    if job is not None:
        log.warning("job.failed", error=error)


def crash_if(settings: config.Settings, point: str, line_no: int = 0) -> None:
    """Fault injection (EH_WORKER_CRASH_AT, tests only; empty, and so inert, unless a test
    sets it): SIGKILL this process at `point` once the job has reached line `line_no`, as a
    power cut would, so the tests can prove what a crash at each point leaves behind."""
    if not settings.worker_crash_at:
        return
    name, _, at = settings.worker_crash_at.partition(":")
    if name == point and line_no >= int(at or 0):
        log.warning("worker.crash_injected", point=point, line_no=line_no)
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
