"""The local admin token: how `teller adapters ...` proves to a running server it is its owner.

The server writes a fresh random token to `data_dir/admin.token` at every start, readable by
its owner only (mode 0600). Whoever can read that file can already read the database and the
models, so holding it is the right test for administering the store through the server's API.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "admin.token"  # noqa: S105 - a file name


def token_path(data_dir: Path) -> Path:
    return data_dir / TOKEN_FILE


def write_token(data_dir: Path) -> str:
    """Create (or replace) the token file with owner-only permissions; return the token."""
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path = token_path(data_dir)
    staged = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.replace(staged, path)
    return token


def read_token(data_dir: Path) -> str | None:
    path = token_path(data_dir)
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def remove_token(data_dir: Path, token: str) -> None:
    """At shutdown, delete the file if it is still ours (a newer server may have replaced it)."""
    if read_token(data_dir) == token:
        with contextlib.suppress(OSError):
            token_path(data_dir).unlink()


def token_matches(expected: str | None, authorization: str) -> bool:
    scheme, _, sent = authorization.partition(" ")
    return (
        expected is not None
        and bool(expected)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(expected.encode(), sent.strip().encode())
    )
