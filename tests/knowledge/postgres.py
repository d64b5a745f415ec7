"""A throwaway PostgreSQL cluster (Debian's `postgresql` package) for the tests' session.

initdb refuses to run as root, so as root the cluster belongs to the `postgres` account
(`runuser`); it listens on a Unix socket in its own folder only, with trust authentication,
and is stopped and removed when the session ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

PORT = 54329


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL is not installed: `make test` installs Debian's postgresql "
            "(or: apt-get install postgresql)"
        )
    return Path(found[-1]).parent


def _as_owner(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """Yields a SQLAlchemy URL of a fresh, empty database `teller`."""
    bin_dir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="teller-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        root.chmod(0o755)
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    subprocess.run(
        _as_owner(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        ),
        **run,
    )
    options = f"-k {sockets} -p {PORT} -c listen_addresses='' -c fsync=off"
    subprocess.run(
        _as_owner(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-w",
                "-l",
                str(root / "log"),
                "start",
            ]
        ),
        **run,
    )
    try:
        subprocess.run(
            _as_owner(
                [
                    str(bin_dir / "createdb"),
                    "-h",
                    str(sockets),
                    "-p",
                    str(PORT),
                    "-U",
                    "postgres",
                    "teller",
                ]
            ),
            **run,
        )
        yield f"postgresql+psycopg://postgres@/teller?host={sockets}&port={PORT}"
    finally:
        subprocess.run(
            _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            check=False,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)
