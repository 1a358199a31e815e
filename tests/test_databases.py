"""The pool of test databases (tests/databases.py) hands a database out only as the template
is: no rows, identities restarted, no session of the previous test, the same schema."""

from __future__ import annotations

import psycopg
import pytest

import config
from databases import DatabasePool, with_database

ADMIN_DSN = config.Settings.from_env().test_admin_dsn


@pytest.fixture
def pool(template_database):
    pool = DatabasePool(ADMIN_DSN, template_database)
    yield pool
    pool.close()


def connect(name: str) -> psycopg.Connection:
    return psycopg.connect(with_database(ADMIN_DSN, name), autocommit=True)


def add_token(conn) -> int:
    return conn.execute(
        "INSERT INTO api_tokens (owner, secret_hash) VALUES ('a', %s) RETURNING token_id",
        [b"x" * 32],
    ).fetchone()[0]


def test_a_used_database_comes_back_empty_with_its_identities_restarted(pool):
    name = pool.take()
    with connect(name) as conn:
        first = add_token(conn)
        add_token(conn)
    pool.give_back(name)
    assert pool.take() == name
    with connect(name) as conn:
        assert conn.execute("SELECT count(*) FROM api_tokens").fetchone()[0] == 0
        assert add_token(conn) == first


def test_a_session_the_test_left_open_is_ended_before_the_next_test(pool):
    name = pool.take()
    left_open = connect(name)
    left_open.execute("LISTEN job_progress")
    pool.give_back(name)
    assert pool.take() == name
    with pytest.raises(psycopg.OperationalError):
        left_open.execute("SELECT 1")
    with connect(name) as conn:
        others = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = "
            "current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert others == 0


@pytest.mark.parametrize(
    "change",
    [
        "ALTER TABLE jobs ADD COLUMN extra int",
        "CREATE TABLE scratch (x int)",
        "CREATE INDEX ON jobs (file_name)",
        "DELETE FROM _yoyo_migration",
    ],
)
def test_a_database_whose_schema_changed_is_dropped_not_reused(pool, change):
    name = pool.take()
    with connect(name) as conn:
        conn.execute(change)
    pool.give_back(name)
    assert pool.spare == []
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        assert (
            admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone()[
                0
            ]
            == 0
        )


def test_closing_the_pool_drops_every_database_it_made_given_back_or_not(template_database):
    pool = DatabasePool(ADMIN_DSN, template_database)
    kept, given_back = pool.take(), pool.take()
    pool.give_back(given_back)
    pool.close()
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        left = admin.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", [[kept, given_back]]
        ).fetchall()
    assert left == []
