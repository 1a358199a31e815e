"""The migrations apply in order, roll back cleanly, and produce the tables the code uses."""

import dataclasses

import psycopg

import core
import jobs


def test_migrations_create_the_tables(db):
    tables = {
        r["table_name"]
        for r in db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    }
    assert {"jobs", "log_entries", "line_errors", "outbox", "outbox_dead"} <= tables


def test_migrate_is_idempotent(database_url):
    assert core.migrate(database_url) == 0


def test_rollback_then_reapply(database_url):
    import yoyo

    backend = yoyo.get_backend(core.yoyo_url(database_url))
    migrations = yoyo.read_migrations(str(core.MIGRATIONS_DIR))
    try:
        with backend.lock():
            backend.rollback_migrations(backend.to_rollback(migrations))
    finally:
        backend.connection.close()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('jobs')").fetchone()[0] is None
    assert core.migrate(database_url) == len(migrations)


def test_every_named_query_parses(db):
    for name, sql in core.QUERIES.items():
        if core.without_comments(sql).lstrip().startswith("COPY"):
            continue
        # PREPARE checks syntax and names without running anything.
        stmt = psycopg.sql.SQL("PREPARE {} AS {}").format(
            psycopg.sql.Identifier(f"q_{name}"), psycopg.sql.SQL(_positional(sql))
        )
        db.execute(stmt)


def _positional(sql):
    import re

    names = []

    def repl(m):
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", repl, sql)


def test_the_job_type_has_the_columns_of_jobs(db):
    """jobs.Job is what `SELECT *` on jobs becomes (class_row): a column added by a migration
    must be added to the type too, or every job query fails."""
    columns = [
        r["column_name"]
        for r in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs' "
            "ORDER BY ordinal_position"
        )
    ]
    fields = [f.name for f in dataclasses.fields(jobs.Job) if f.name != "first_start"]
    assert columns == fields
