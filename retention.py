"""Retention: how long an owner's jobs are kept, and the sweep that removes older ones.

A job is kept EH_RETENTION_DAYS from its upload (`created_at`; 0: for ever), or as many days as
an admin set for its owner (`owner_retention`, sql/migrations/0011_retention.sql; "for ever"
too). Once older, the sweep removes it everywhere exactly as `DELETE /api/v1/jobs/{id}` does
(jobs.delete: the stored object, the row with its entries and line errors, its dead-lettered
events, a job_deletions record from which the relay deletes its events in ClickHouse once none
is left in the outbox), `deleted_by` SWEEPER.

    python eventhorizon.py retention set --owner NAME (--days N | --forever)
    python eventhorizon.py retention clear --owner NAME
    python eventhorizon.py retention show
    python eventhorizon.py retention sweep

Any number of processes may sweep (each API process every EH_RETENTION_INTERVAL_S, and the
command): one at a time, by a session advisory lock the others skip on. A sweep reads expired
jobs EH_RETENTION_BATCH at a time without locks, then removes each in a transaction of its own
that locks the job's row (SKIP LOCKED) and takes the worker's lock on it (try): a job a worker
holds, or that is `processing`, is left for a later sweep, and nothing ever waits on a lock
that ingest holds or holds one ingest waits for longer than one job's removal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import uuid
from typing import Any

import psycopg
import structlog
from psycopg.rows import class_row, tuple_row

import audit
import auth
import config
import core
import jobs
import observe

log = structlog.get_logger("retention")

MAX_DAYS = 36_500  # owner_retention's CHECK; EH_RETENTION_DAYS's maximum
# job_deletions.deleted_by and job.deleted's `deleted_by` of a swept job: no owner's name can
# be it (auth.OWNER_PATTERN has no ':').
SWEEPER = "system:retention"
FIRST_PAGE = (dt.datetime(1, 1, 1, tzinfo=dt.UTC), uuid.UUID(int=0))


class InvalidRetention(ValueError):
    """Days that are not a whole number from 1 to MAX_DAYS (or None, for ever), or an owner
    name that cannot be one."""


@dataclasses.dataclass(frozen=True)
class OwnerRetention:
    """A row of owner_retention: `days` None keeps the owner's jobs for ever."""

    owner: str
    days: int | None
    set_by: str
    set_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class Policy:
    """How long an owner's jobs are kept, and why: their own setting, or the default."""

    owner: str
    default_days: int | None  # EH_RETENTION_DAYS; None: for ever
    own: OwnerRetention | None

    @property
    def days(self) -> int | None:
        return self.own.days if self.own else self.default_days

    def json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "days": self.days,
            "source": "owner" if self.own else "default",
            "default_days": self.default_days,
            "set_by": self.own.set_by if self.own else None,
            "set_at": self.own.set_at.isoformat() if self.own else None,
        }


def default_days(settings: config.Settings) -> int | None:
    return settings.retention_days or None


def check_owner(owner: str) -> str:
    if not auth.OWNER_PATTERN.fullmatch(owner):
        raise InvalidRetention(
            f"owner must be 1-64 letters, digits, '.', '_', '@' or '-', got {owner[:80]!r}"
        )
    return owner


def check_days(days: Any) -> int | None:
    """`days` as stored: a whole number of days from 1 to MAX_DAYS, or None (for ever)."""
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InvalidRetention(
            f"days must be a whole number from 1 to {MAX_DAYS}, or null to "
            f"keep the owner's jobs for ever; got {str(days)[:40]!r}"
        )
    return days


# --------------------------------------------------------------------------- owners' settings


async def read_policy(aconn, settings: config.Settings, owner: str) -> Policy:
    cur = aconn.cursor(row_factory=class_row(OwnerRetention))
    await cur.execute(core.QUERIES["get_owner_retention"], {"owner": check_owner(owner)})
    return Policy(owner, default_days(settings), await cur.fetchone())


async def set_policy(
    aconn, settings: config.Settings, owner: str, days: int | None, *, set_by: str, who: audit.Actor
) -> Policy:
    """Set `owner`'s own retention (None: for ever), with its `audit.retention.set` event;
    the next sweep applies it."""
    cur = aconn.cursor(row_factory=class_row(OwnerRetention))
    async with aconn.transaction():
        await cur.execute(
            core.QUERIES["set_owner_retention"],
            {"owner": check_owner(owner), "days": check_days(days), "set_by": set_by},
        )
        policy = Policy(owner, default_days(settings), await cur.fetchone())
        await audit.arecord(aconn, settings, "audit.retention.set", who, object_=owner, days=days)
    log.info("retention.set", owner=owner, days=days, set_by=set_by)
    return policy


async def clear_policy(aconn, settings: config.Settings, owner: str, *, who: audit.Actor) -> bool:
    """`owner` keeps the default again (`audit.retention.cleared`, if they had a setting of
    their own); False if they had none."""
    async with aconn.transaction():
        cur = await aconn.execute(
            core.QUERIES["clear_owner_retention"], {"owner": check_owner(owner)}
        )
        cleared = await cur.fetchone() is not None
        if cleared:
            await audit.arecord(aconn, settings, "audit.retention.cleared", who, object_=owner)
    if cleared:
        log.info("retention.cleared", owner=owner)
    return cleared


async def list_policies(aconn) -> list[OwnerRetention]:
    cur = aconn.cursor(row_factory=class_row(OwnerRetention))
    await cur.execute(core.QUERIES["list_owner_retention"])
    return await cur.fetchall()


# --------------------------------------------------------------------------- the sweep


@dataclasses.dataclass
class Swept:
    """What one sweep did. `ran` False: another process was sweeping, this one did nothing."""

    ran: bool
    removed: list[jobs.Job] = dataclasses.field(default_factory=list)
    skipped: int = 0  # expired, but held (a worker, a delete) or no longer expired: next time
    failed: int = 0  # a removal failed for a reason of the job's own (logged): next time

    def json(self) -> dict[str, Any]:
        return {
            "ran": self.ran,
            "skipped": self.skipped,
            "failed": self.failed,
            "removed": [
                {
                    "job_id": str(j.job_id),
                    "owner": j.owner,
                    "file_name": j.file_name,
                    "status": j.status,
                    "created_at": j.created_at.isoformat(),
                }
                for j in self.removed
            ],
        }


async def sweep(settings: config.Settings, s3) -> Swept:
    """One sweep now, on a connection of its own (closing it releases the sweep's lock)."""
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True, application_name=core.process_name("retention")
    ) as aconn:
        cur = aconn.cursor(row_factory=tuple_row)
        await cur.execute(core.QUERIES["try_lock_retention_sweep"])
        if not (await cur.fetchone())[0]:
            log.info("retention.sweep_skipped", reason="another process is sweeping")
            return Swept(ran=False)
        swept = await sweep_locked(aconn, settings, s3)
    log.info(
        "retention.swept",
        removed=len(swept.removed),
        skipped=swept.skipped,
        failed=swept.failed,
        default_days=default_days(settings),
    )
    return swept


async def sweep_locked(aconn, settings: config.Settings, s3) -> Swept:
    """The sweep's work, the caller holding the sweep's lock. Safe without it too (two at once
    remove each job once: each removal locks the row and re-checks it), only wasteful."""
    swept, after, days = Swept(ran=True), FIRST_PAGE, default_days(settings)
    while True:
        page = await jobs.read_expired(
            aconn, default_days=days, after=after, limit=settings.retention_batch
        )
        for _created_at, job_id in page:
            try:
                job = await remove_expired(aconn, settings, s3, job_id)
            except Exception as exc:
                if core.is_outage(exc):
                    raise  # the whole sweep waits for the next one
                # One object S3 refuses must not stop every sweep at the oldest job for ever.
                log.error("retention.job_failed", job_id=str(job_id), error=str(exc)[:300])
                observe.RETENTION_REMOVED.labels("failed").inc()
                swept.failed += 1
                continue
            if job is None:
                swept.skipped += 1
            else:
                observe.RETENTION_REMOVED.labels("removed").inc()
                swept.removed.append(job)
        if len(page) < settings.retention_batch:
            return swept
        after = page[-1]


async def remove_expired(
    aconn, settings: config.Settings, s3, job_id: uuid.UUID
) -> jobs.Job | None:
    """Remove one expired job as DELETE /api/v1/jobs/{id} does, in one transaction: None if
    it is no longer expired, a worker or another transaction holds it (left for later).

    The object is deleted first, inside the transaction: a failure after it leaves the job
    for the next sweep, whose delete of the missing object succeeds as S3 deletes do."""
    async with aconn.transaction():
        job = await jobs.lock_expired(aconn, job_id, default_days=default_days(settings))
        if job is None or not await jobs.try_lock_in_transaction(aconn, job_id):
            return None
        await asyncio.to_thread(s3.delete_object, Bucket=job.bucket, Key=job.object_key)
        # Its job.deleted event (deleted_by SWEEPER) and its audit event, in the removal's
        # transaction: one each per job removed, whichever sweeper removed it.
        await jobs.delete(aconn, settings, job, deleted_by=SWEEPER)
        await audit.arecord(
            aconn,
            settings,
            "audit.retention.swept",
            audit.Actor(SWEEPER),
            object_=job.job_id,
            owner=job.owner,
            file_name=job.file_name,
            uploaded_at=job.created_at.isoformat(),
        )
    log.info(
        "retention.job_removed",
        job_id=str(job.job_id),
        owner=job.owner,
        created_at=job.created_at.isoformat(),
    )
    return job


async def sweep_periodically(settings: config.Settings, s3) -> None:
    """Sweep about every EH_RETENTION_INTERVAL_S (±25 %, so processes started together do not
    keep meeting at the lock), the first one within the first interval. A failed sweep (a
    service away) is logged and the next one tries again; it never ends the task."""
    interval = settings.retention_interval_s
    await asyncio.sleep(interval * random.uniform(0.25, 1.0))
    while True:
        try:
            await sweep(settings, s3)
        except Exception as exc:
            log.warning("retention.sweep_failed", error=str(exc)[:300], outage=core.is_outage(exc))
        await asyncio.sleep(interval * random.uniform(0.75, 1.25))
