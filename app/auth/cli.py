"""`teller users add|passwd|disable|enable`: account administration from a shell.

Passwords come from `--password-stdin` (scripts) or an interactive prompt, never from the
command line, where they would land in shell history and the process list.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

from sqlalchemy.orm import Session

from app.auth import service
from app.cli_common import CliError, open_session
from app.config import Settings
from app.keys import service as api_keys
from app.store.models import User


def read_password(args: argparse.Namespace, prompt: str = "Password: ") -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CliError("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise CliError("no terminal to ask for a password: use --password-stdin")
    first = getpass.getpass(prompt)
    if first != getpass.getpass("Again: "):
        raise CliError("the two passwords differ")
    return first


def _user(session: Session, name: str) -> User:
    user = service.get_user(session=session, username=name)
    if user is None:
        raise CliError(f"no user named {name!r}")
    return user


def users_add(args: argparse.Namespace, settings: Settings) -> str:
    password = read_password(args)
    with open_session(settings) as session:
        try:
            user = service.create_user(
                session=session, username=args.name, password=password, admin=args.admin
            )
        except service.AccountError as exc:
            raise CliError(str(exc)) from None
        return f"added {user.role} {user.username}"


def users_passwd(args: argparse.Namespace, settings: Settings) -> str:
    """A reset keeps API keys unless `--revoke-keys`; the reply says how many still work."""
    password = read_password(args, "New password: ")
    with open_session(settings) as session:
        user = _user(session, args.name)
        try:
            revoked = service.reset_password(
                session=session,
                user=user,
                new=password,
                revoke_keys=args.revoke_keys,
                actor_id=None,
            )
        except service.AccountError as exc:
            raise CliError(str(exc)) from None
        done = f"password changed for {user.username}; their sessions were ended"
        if args.revoke_keys:
            return f"{done}; {_keys(revoked)} revoked"
        live = api_keys.count_live_keys(session=session, user_id=user.id)
        if live:
            verb = "still works" if live == 1 else "still work"
            return f"{done}; {_keys(live)} {verb} (add --revoke-keys to revoke them)"
        return done


def _keys(count: int) -> str:
    return f"{count} API key{'' if count == 1 else 's'}"


def _disabled(value: bool) -> Callable[[argparse.Namespace, Settings], str]:
    def run(args: argparse.Namespace, settings: Settings) -> str:
        with open_session(settings) as session:
            user = _user(session, args.name)
            try:
                service.set_disabled(session=session, user=user, disabled=value, actor_id=None)
            except service.AccountError as exc:
                raise CliError(str(exc)) from None
            state = "disabled (sessions ended)" if value else "enabled"
            return f"{user.username} {state}"

    return run


def add_parser(commands: argparse._SubParsersAction, runner: Callable) -> None:
    """Register `teller users ...`; `runner(function)` adapts a function to the CLI's calling
    convention (settings, errors, exit status)."""
    users = commands.add_parser("users", help="add, disable or reset accounts")
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add an account: teller users add NAME [--admin]")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="an administrator, not a user")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    add.set_defaults(run=runner(users_add))
    passwd = actions.add_parser("passwd", help="set a new password: teller users passwd NAME")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.add_argument(
        "--revoke-keys",
        action="store_true",
        help="also revoke the user's API keys (whoever had the password could have made some)",
    )
    passwd.set_defaults(run=runner(users_passwd))
    for name, value, text in (
        ("disable", True, "disable an account; its sessions end at once"),
        ("enable", False, "re-enable a disabled account"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("name")
        sub.set_defaults(run=runner(_disabled(value)))
