"""The operator's commands of `python eventhorizon.py` besides serving: the command line's
shape (`command_line`), the `tokens` command (create, list, revoke, verify) and the `retention`
command (set, clear, show, sweep). Serving and `migrate` are eventhorizon.main's."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import psycopg

import audit
import auth
import config
import core
import retention


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python eventhorizon.py", description="The Event Horizon HTTP API (serves by default)."
    )
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
    retention_command_line(commands)
    return parser


def retention_command_line(commands) -> None:
    keep = commands.add_parser("retention", help="how long owners' jobs are kept; sweep now")
    actions = keep.add_subparsers(dest="action", required=True)
    set_ = actions.add_parser("set", help="an owner's own retention, instead of the default")
    set_.add_argument("--owner", required=True)
    days = set_.add_mutually_exclusive_group(required=True)
    days.add_argument(
        "--days",
        type=int,
        help=f"1-{retention.MAX_DAYS}: jobs uploaded more than this many days ago are removed",
    )
    days.add_argument("--forever", action="store_true", help="the owner's jobs are kept")
    clear = actions.add_parser("clear", help="the owner keeps EH_RETENTION_DAYS again")
    clear.add_argument("--owner", required=True)
    actions.add_parser("show", help="the default, and each owner's own (JSON)")
    actions.add_parser(
        "sweep", help="remove every job past its retention now; prints what it removed (JSON)"
    )


def tokens_command(settings: config.Settings, args: argparse.Namespace) -> int:
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
                    audit.record(
                        conn,
                        settings,
                        "audit.token.created",
                        audit.operator(),
                        object_=auth.token_id_of(token),
                        owner=args.owner,
                        admin=args.admin,
                    )
            except auth.InvalidOwner as exc:
                sys.exit(f"error: {exc}")
            kind = "admin token" if args.admin else "token"
            print(f"created {kind} for {args.owner}; keep it secret, it is not shown again:")
            print(token)
        elif args.action == "list":
            print("id\towner\tadmin\tcreated\tlast used\trevoked")
            for t in auth.list_tokens(conn):
                print(
                    "\t".join(
                        str(v)
                        for v in (
                            t.token_id,
                            t.owner,
                            "yes" if t.admin else "no",
                            stamp(t.created_at),
                            stamp(t.last_used_at),
                            stamp(t.revoked_at),
                        )
                    )
                )
        elif not revoke_token(conn, settings, args.token_id):
            sys.exit(f"error: no live token with id {args.token_id}")
        else:
            print(f"revoked token {args.token_id}")
    return 0


def revoke_token(conn, settings: config.Settings, token_id: int) -> bool:
    """Revoke the token with its audit event, in one transaction; False if none is live."""
    with conn.transaction():
        revoked = auth.revoke_token(conn, token_id)
        if revoked:
            audit.record(conn, settings, "audit.token.revoked", audit.operator(), object_=token_id)
    return revoked


async def verify_token(settings: config.Settings, token: str) -> int:
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as aconn:
        return 0 if await auth.authenticate(aconn, token) else 1


def retention_command(settings: config.Settings, args: argparse.Namespace) -> int:
    """`retention set|clear|show|sweep`: each prints its answer as one line of JSON, the last
    of standard output (the log's lines come before it)."""
    try:
        answer = asyncio.run(retention_action(settings, args))
    except retention.InvalidRetention as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(answer))
    return 0


async def retention_action(settings: config.Settings, args: argparse.Namespace):
    if args.action == "sweep":
        return (await retention.sweep(settings, core.s3_client(settings))).json()
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as aconn:
        if args.action == "set":
            days = None if args.forever else args.days
            return (
                await retention.set_policy(
                    aconn,
                    settings,
                    args.owner,
                    days,
                    set_by=f"os:{audit.os_user()}",
                    who=audit.operator(),
                )
            ).json()
        if args.action == "clear":
            await retention.clear_policy(aconn, settings, args.owner, who=audit.operator())
            return (await retention.read_policy(aconn, settings, args.owner)).json()
        return {
            "default_days": retention.default_days(settings),
            "owners": [
                {
                    "owner": r.owner,
                    "days": r.days,
                    "set_by": r.set_by,
                    "set_at": r.set_at.isoformat(),
                }
                for r in await retention.list_policies(aconn)
            ],
        }


def stamp(value) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"
