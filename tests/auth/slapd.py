"""A throwaway OpenLDAP server (Debian's `slapd`) with a small directory, for the LDAP tests.

The server gets its own folder (config, database, pid file), listens on 127.0.0.1 only, and is
stopped and removed when the block ends. The directory: people `alice` (groups finance and
admins), `bob` (group legal), `carol` and `star` (a name only an injection would
find), each with the password `<name>-password-1`; carol is in finance too (a
groupOfNames needs a member when alice leaves it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.live import free_port

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
SUFFIX = "dc=teller,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"


def password(name: str) -> str:
    return f"{name}-password-1"


@dataclass(frozen=True)
class Directory:
    url: str
    bind_dn: str
    base_dn: str
    root: Path


CONFIG = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {root}/slapd.pid
argsfile {root}/slapd.args
database mdb
maxsize 10485760
suffix "{suffix}"
rootdn "cn=admin,{suffix}"
rootpw admin-secret
directory {root}/db
access to attrs=userPassword by self read by anonymous auth by * none
access to * by users read by * none
"""


def _person(uid: str, mail: str) -> str:
    return (
        f"dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\n"
        f"sn: {uid}\nmail: {mail}\nuserPassword: {password(uid)}\n\n"
    )


def _group(cn: str, members: list[str]) -> str:
    lines = [f"dn: cn={cn},{GROUPS}", "objectClass: groupOfNames", f"cn: {cn}"]
    lines += [f"member: uid={m},{PEOPLE}" for m in members]
    return "\n".join(lines) + "\n\n"


def directory_ldif() -> str:
    return (
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: teller\n"
        "o: Teller tests\n\n"
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n"
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n\n"
        + _person("alice", "alice@teller.test")
        + _person("bob", "bob@teller.test")
        + _person("carol", "carol@teller.test")
        + _person("star", "star@teller.test")
        + _group("finance", ["alice", "carol"])
        + _group("legal", ["bob"])
        + _group("admins", ["alice"])
    )


@contextlib.contextmanager
def slapd_server() -> Iterator[Directory]:
    if not SLAPD.exists():
        raise RuntimeError(
            "OpenLDAP's slapd is not installed: `make test` installs Debian's slapd "
            "(or: apt-get install slapd)"
        )
    root = Path(tempfile.mkdtemp(prefix="teller-slapd-"))
    (root / "db").mkdir()
    config = root / "slapd.conf"
    config.write_text(CONFIG.format(root=root, suffix=SUFFIX))
    (root / "data.ldif").write_text(directory_ldif())
    subprocess.run(
        [str(SLAPADD), "-f", str(config), "-l", str(root / "data.ldif")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    subprocess.run(
        [str(SLAPD), "-f", str(config), "-h", f"{url}/"], check=True, capture_output=True
    )
    pid_file = root / "slapd.pid"
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not _listening(port):
            if time.monotonic() > deadline:
                raise RuntimeError("slapd did not start")
            time.sleep(0.05)
        yield Directory(url, f"uid={{username}},{PEOPLE}", SUFFIX, root)
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            for _ in range(100):
                if not pid_file.exists():
                    break
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
