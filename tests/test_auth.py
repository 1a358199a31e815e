"""Tokens: created, stored only as a hash, recognised, refused once revoked."""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from psycopg.rows import dict_row

import auth


async def principal_of(database_url: str, token: str | None) -> auth.Principal | None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as aconn:
        return await auth.authenticate(aconn, token)


async def test_a_token_is_recognised_and_stored_only_as_a_hash(db, database_url):
    token = auth.create_token(db, "alice")
    admin_token = auth.create_token(db, "root", admin=True)
    assert auth.TOKEN_PATTERN.fullmatch(token)
    secret = token.split("_", 2)[2]
    assert len(secret) == 43  # 256 bits, URL-safe base64 without padding

    stored = db.execute("SELECT * FROM api_tokens ORDER BY token_id").fetchall()
    assert [bytes(r["secret_hash"]) for r in stored][0] == hashlib.sha256(secret.encode()).digest()
    text = repr(stored)
    assert secret not in text and token not in text

    alice = await principal_of(database_url, token)
    assert (alice.owner, alice.admin, alice.owner_filter) == ("alice", False, "alice")
    root = await principal_of(database_url, admin_token)
    assert (root.owner, root.admin, root.owner_filter) == ("root", True, None)
    assert (
        db.execute("SELECT last_used_at FROM api_tokens WHERE owner = 'alice'").fetchone()[
            "last_used_at"
        ]
        is not None
    )


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: None,
        lambda t: "",
        lambda t: t[:-1],
        lambda t: t + "A",
        lambda t: t.upper(),
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # right id, wrong secret
        lambda t: "eh_999999_" + t.split("_", 2)[2],  # unknown id
        lambda t: t.replace("eh_", "eh_0"),
        lambda t: " " + t,
        lambda t: "eh_1_" + "=" * 43,
    ],
)
async def test_a_wrong_or_malformed_token_is_refused(db, database_url, mangle):
    token = auth.create_token(db, "alice")
    assert await principal_of(database_url, mangle(token)) is None


async def test_a_revoked_token_stops_working_at_once(db, database_url):
    token = auth.create_token(db, "alice")
    [info] = auth.list_tokens(db)
    assert await principal_of(database_url, token) is not None
    assert auth.revoke_token(db, info.token_id) is True
    assert await principal_of(database_url, token) is None
    assert auth.revoke_token(db, info.token_id) is False  # once
    assert auth.list_tokens(db)[0].revoked_at is not None


@pytest.mark.parametrize("owner", ["", "a b", "-lead", "x" * 65, "名前", "a\nb", "a;drop"])
def test_owner_names_are_plain(db, owner):
    with pytest.raises(auth.InvalidOwner):
        auth.create_token(db, owner)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("Bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
        (None, None),
        ("abc", None),
    ],
)
def test_bearer_header_parsing(header, token):
    assert auth.bearer_token(header) == token


def test_tokens_list_never_shows_a_token(db):
    auth.create_token(db, "alice")
    fields = set(auth.TokenInfo.__dataclass_fields__)
    assert fields == {"token_id", "owner", "admin", "created_at", "last_used_at", "revoked_at"}


@pytest.fixture
def db(database_url):
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn
