"""The operator's commands of `python eventhorizon.py` besides serving: the command line's
shape (`command_line`) and the `tokens` command (create, list, revoke, verify). Serving and
`migrate` are eventhorizon.main's."""

from __future__ import annotations

import argparse
import asyncio
import sys

import psycopg

import audit
import auth
import core


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python eventhorizon.py",
                                     description="The Event Horizon HTTP API (serves by default).")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("migrate", help="apply sql/migrations and exit")
    tokens = commands.add_parser("tokens", help="create, list or revoke API tokens")
    actions = tokens.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="print a new token (its last line of output)")
    create.add_argument("--owner", required=True, help="whose jobs the token's uploads are")
    create.add_argument("--admin", action="store_true", help="the token sees every job")
    actions.add_parser("list", help="id, owner, admin, created, last used, revoked")
    revoke = actions.add_parser("revoke", help="the token stops working at once")
    revoke.add_argument("token_id", type=int, metavar="ID")
    verify = actions.add_parser("verify", help="exit 0 if the token on standard input works")
    verify.set_defaults(stdin=True)
    return parser


def tokens_command(settings: core.Settings, args: argparse.Namespace) -> int:
    """`tokens create|list|revoke|verify`: the token itself is printed once, by create, as
    the last line of standard output, and appears nowhere else (its audit event names its
    id, with the operating-system user as the actor)."""
    if args.action == "verify":
        return asyncio.run(verify_token(settings, sys.stdin.read().strip()))
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        if args.action == "create":
            try:
                with conn.transaction():
                    token = auth.create_token(conn, args.owner, admin=args.admin)
                    audit.record(conn, settings, "audit.token.created", audit.operator(),
                                 object_=auth.token_id_of(token), owner=args.owner,
                                 admin=args.admin)
            except auth.InvalidOwner as exc:
                sys.exit(f"error: {exc}")
            kind = "admin token" if args.admin else "token"
            print(f"created {kind} for {args.owner}; keep it secret, it is not shown again:")
            print(token)
        elif args.action == "list":
            print("id\towner\tadmin\tcreated\tlast used\trevoked")
            for t in auth.list_tokens(conn):
                print("\t".join(str(v) for v in (
                    t.token_id, t.owner, "yes" if t.admin else "no", stamp(t.created_at),
                    stamp(t.last_used_at), stamp(t.revoked_at))))
        elif not revoke_token(conn, settings, args.token_id):
            sys.exit(f"error: no live token with id {args.token_id}")
        else:
            print(f"revoked token {args.token_id}")
    return 0


def revoke_token(conn, settings: core.Settings, token_id: int) -> bool:
    """Revoke the token with its audit event, in one transaction; False if none is live."""
    with conn.transaction():
        revoked = auth.revoke_token(conn, token_id)
        if revoked:
            audit.record(conn, settings, "audit.token.revoked", audit.operator(),
                         object_=token_id)
    return revoked


async def verify_token(settings: core.Settings, token: str) -> int:
    async with await psycopg.AsyncConnection.connect(settings.database_url,
                                                     autocommit=True) as aconn:
        return 0 if await auth.authenticate(aconn, token) else 1


def stamp(value) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"
