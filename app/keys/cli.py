"""`teller keys create NAME | list [NAME] | revoke ID`: API keys from a shell (admins).

The new key is printed once, on its own line, so a script can capture it; only its hash is
stored, so a lost key is revoked and replaced, never recovered.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from app.auth import service as accounts
from app.cli_common import CliError, open_session
from app.config import Settings
from app.keys import service


def keys_create(args: argparse.Namespace, settings: Settings) -> str:
    with open_session(settings) as session:
        user = accounts.get_user(session=session, username=args.name)
        if user is None:
            raise CliError(f"no user named {args.name!r} (add one with 'teller users add')")
        try:
            made = service.create_key(session=session, user=user, name=args.label)
        except service.ApiKeyError as exc:
            raise CliError(str(exc)) from None
        return (
            f"{made.secret}\n"
            f"key {made.key.id} for {user.username} ({made.key.prefix}…); "
            "it is shown only now: store it safely"
        )


def keys_list(args: argparse.Namespace, settings: Settings) -> str:
    with open_session(settings) as session:
        user_id = None
        if args.name:
            user = accounts.get_user(session=session, username=args.name)
            if user is None:
                raise CliError(f"no user named {args.name!r}")
            user_id = user.id
        names = {u.id: u.username for u in accounts.list_users(session=session)}
        rows = [
            f"{key.id}\t{names.get(key.user_id, '?')}\t{key.prefix}…\t{key.name or '-'}\t"
            f"{'revoked' if key.revoked_at else 'active'}"
            for key in service.list_keys(session=session, user_id=user_id)
        ]
        return "\n".join(["id\tuser\tprefix\tname\tstate", *rows])


def keys_revoke(args: argparse.Namespace, settings: Settings) -> str:
    with open_session(settings) as session:
        key = service.get_key(session=session, key_id=args.id)
        if key is None:
            raise CliError(f"no API key with id {args.id}")
        if not service.revoke_key(session=session, key=key):
            return f"key {key.id} ({key.prefix}…) was already revoked"
        return f"revoked key {key.id} ({key.prefix}…)"


def add_parser(commands: argparse._SubParsersAction, runner: Callable) -> None:  # noqa: ANN001
    """Register `teller keys ...` (same calling convention as `app.auth.cli.add_parser`)."""
    keys = commands.add_parser("keys", help="create, list or revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="print a new API key for user NAME (once)")
    create.add_argument("name", help="the user the key acts as")
    create.add_argument("--label", default="", help="a note to tell keys apart")
    create.set_defaults(run=runner(keys_create))
    listing = actions.add_parser("list", help="keys of every user, or of NAME")
    listing.add_argument("name", nargs="?", default="")
    listing.set_defaults(run=runner(keys_list))
    revoke = actions.add_parser("revoke", help="revoke key ID (see 'teller keys list')")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(run=runner(keys_revoke))
