"""Each test's own Postgres database, from a pool of migrated databases emptied between tests.

Cloning the migrated template for every test and dropping it afterwards cost the Postgres
server about 0.14 s of CPU a test (most of it the kernel copying and unlinking the clone's
~300 files) and the test some 0.2 s of waiting: a fifth of the suite's CPU. Emptying a used
database costs about a third of that. A database goes back to the pool only as it came out:
no session of the test left in it, its tables truncated (identities restarted), and its schema
what the template's is; a test that changed the schema (a migration rolled back, a table
added) has its database dropped instead.
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg

# What a test could change about a database besides its rows: relations, columns, defaults,
# constraints, indexes, functions, triggers, grants, the migrations applied and their log.
FINGERPRINT = """
WITH ns AS (
    SELECT oid FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%'
)
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM (
    SELECT format('rel %s %s %s', c.oid::regclass, c.relkind, c.relacl) AS item
    FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('col %s.%s %s %s %s', c.oid::regclass, a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(d.adbin, d.adrelid))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace IN (SELECT oid FROM ns) AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT format('con %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
    FROM pg_constraint WHERE connamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('idx %s', pg_get_indexdef(i.indexrelid))
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE c.relnamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('fn %s %s', p.oid::regprocedure, md5(p.prosrc))
    FROM pg_proc p WHERE p.pronamespace IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('trg %s %s %s', tgrelid::regclass, tgname, tgenabled)
    FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT format('ns %s %s', nspname, nspacl) FROM pg_namespace WHERE oid IN (SELECT oid FROM ns)
    UNION ALL
    SELECT format('set %s', setconfig) FROM pg_db_role_setting s
    JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = current_database()
    UNION ALL
    SELECT format('yoyo %s', migration_hash) FROM _yoyo_migration
    UNION ALL
    SELECT format('yoyo log %s', count(*)) FROM _yoyo_log
) items
"""

# Every table of the template but yoyo's own (whose rows say which migrations ran).
TABLES = """
SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
  AND tablename NOT IN ('_yoyo_migration', '_yoyo_log', '_yoyo_version', 'yoyo_lock')
ORDER BY 1
"""

OTHER_SESSIONS = (
    "SELECT pid FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def with_database(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


class DatabasePool:
    """Databases cloned from `template`, handed out one test at a time (one pool per pytest
    process: the xdist workers never share a database)."""

    def __init__(self, admin_dsn: str, template: str):
        self.admin_dsn, self.template = admin_dsn, template
        self.spare: list[str] = []
        self.made: set[str] = set()  # every database of the pool's, spare or taken
        with psycopg.connect(with_database(admin_dsn, template), autocommit=True) as conn:
            self.tables = [name for (name,) in conn.execute(TABLES)]
            self.fingerprint = conn.execute(FINGERPRINT).fetchone()[0]
            filled = [
                t
                for t in self.tables
                if conn.execute(f"SELECT EXISTS (SELECT FROM {t})").fetchone()[0]
            ]
        # The migrations insert no rows today; truncating would lose any they did.
        assert not filled, f"the template's tables {filled} have rows: truncation would lose them"

    def take(self) -> str:
        """A database as the template is: a spare one, else a new clone."""
        if self.spare:
            return self.spare.pop()
        name = f"eh_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.made.add(name)
        return name

    def give_back(self, name: str) -> None:
        """Empty the database for the next test, or drop it if it cannot be made as new."""
        if self._emptied(name):
            self.spare.append(name)
        else:
            self._drop(name)

    def close(self) -> None:
        """Drop every database the pool made, given back or not."""
        self.spare.clear()
        for name in sorted(self.made):
            self._drop(name)

    def _emptied(self, name: str) -> bool:
        with psycopg.connect(with_database(self.admin_dsn, name), autocommit=True) as conn:
            if not _no_other_sessions(conn):
                return False
            if conn.execute(FINGERPRINT).fetchone()[0] != self.fingerprint:
                return False
            conn.execute(f"TRUNCATE {', '.join(self.tables)} RESTART IDENTITY")
            return True

    def _drop(self, name: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.made.discard(name)


def _no_other_sessions(conn: psycopg.Connection, timeout_s: float = 5.0) -> bool:
    """End every other session in the database (a test's processes are gone, but a backend
    may outlive its client a moment); False if one is still there after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = [pid for (pid,) in conn.execute(OTHER_SESSIONS)]
        if not pids:
            return True
        if time.monotonic() > deadline:
            return False
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
        time.sleep(0.01)
