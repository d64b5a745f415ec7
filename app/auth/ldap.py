"""LDAP / Active Directory sign-in: bind as the user, read their entry and groups.

The password is checked by the directory itself (a simple bind as the user, over ldaps:// or
StartTLS unless the server is on this machine); Teller stores no LDAP password. The user name
is checked against a conservative pattern and then escaped for where it goes (an RDN value in
the bind DN, a filter value in searches), so no input can change a DN or widen a filter. An
empty password is refused before any bind: many directories treat it as an anonymous bind
that "succeeds".
"""

from __future__ import annotations

import math
import re
import ssl
from dataclasses import dataclass

from ldap3 import NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPBindError, LDAPException, LDAPSocketOpenError
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from app.config import Settings

PROVIDER = "ldap"
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
"""Directory user names Teller accepts: no `*`, `(`, `)`, `\\`, `,`, `=` or spaces."""


class LdapError(Exception):
    """Sign-in refused: wrong name or password (deliberately vague), or an invalid name."""


class LdapUnavailable(LdapError):
    """The directory could not be reached or refused the connection's security."""


@dataclass(frozen=True)
class LdapIdentity:
    subject: str
    """The user's entry DN (as the directory spells it)."""
    username: str
    email: str | None
    groups: list[str]
    """The `cn` of every group the user is a member of."""


def _bind_name(template: str, username: str) -> str:
    """The bind DN (or AD user principal name) for `username`, escaped for its place."""
    if "=" in template:  # a DN: the name is (part of) an RDN value
        return template.replace("{username}", escape_rdn(username))
    return template.replace("{username}", username)  # `{username}@corp`: a UPN, name checked


def _server(settings: Settings) -> Server:
    tls = None
    if settings.ldap_url.startswith("ldaps://") or settings.ldap_start_tls:
        tls = Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=settings.ldap_ca_file or None,
            version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return Server(
        settings.ldap_url,
        get_info=NONE,
        tls=tls,
        connect_timeout=math.ceil(settings.ldap_timeout_seconds),
    )


def authenticate(*, settings: Settings, username: str, password: str) -> LdapIdentity:
    """Bind as the user and read their groups.

    Raises:
        LdapError: the name is not a plain user name, the password is empty, or the directory
            refused the bind (one vague message: no hint which part was wrong).
        LdapUnavailable: the directory is unreachable or TLS failed.
    """
    name = username.strip()
    if not USERNAME_RE.fullmatch(name) or not password:
        raise LdapError("Wrong user name or password.")
    connection = Connection(
        _server(settings),
        user=_bind_name(settings.ldap_bind_dn, name),
        password=password,
        receive_timeout=math.ceil(settings.ldap_timeout_seconds),  # ldap3 packs whole seconds
        raise_exceptions=False,
        read_only=True,
    )
    try:
        connection.open()
        if settings.ldap_start_tls and not connection.start_tls():
            raise LdapUnavailable("The directory refused StartTLS.")
        if not connection.bind():
            raise LdapError("Wrong user name or password.")
        return _read_identity(connection, settings, name)
    except LDAPSocketOpenError:
        raise LdapUnavailable(f"The directory at {settings.ldap_url} cannot be reached.") from None
    except LDAPBindError:
        raise LdapError("Wrong user name or password.") from None
    except LDAPException as exc:
        raise LdapUnavailable(f"The directory failed: {type(exc).__name__}.") from None
    finally:
        connection.unbind()


def _read_identity(connection: Connection, settings: Settings, name: str) -> LdapIdentity:
    base = settings.ldap_base_dn
    user_filter = settings.ldap_user_filter.replace("{username}", escape_filter_chars(name))
    connection.search(base, user_filter, SUBTREE, attributes=["mail", "memberOf"], size_limit=2)
    entries = list(connection.entries)
    if len(entries) != 1:
        # Bound, yet not exactly one entry: the filter does not describe this directory.
        raise LdapError("Wrong user name or password.")
    entry = entries[0]
    user_dn = entry.entry_dn
    attributes = entry.entry_attributes_as_dict
    mail = (attributes.get("mail") or [None])[0]
    if settings.ldap_group_filter:
        group_filter = settings.ldap_group_filter.replace(
            "{user_dn}", escape_filter_chars(user_dn)
        ).replace("{username}", escape_filter_chars(name))
        connection.search(base, group_filter, SUBTREE, attributes=["cn"], size_limit=1000)
        groups = [str(cn) for e in connection.entries for cn in e.entry_attributes_as_dict["cn"]]
    else:
        groups = [_first_cn(dn) for dn in attributes.get("memberOf") or []]
    return LdapIdentity(
        subject=user_dn,
        username=name,
        email=str(mail) if mail else None,
        groups=sorted({g for g in groups if g}),
    )


def _first_cn(dn: str) -> str:
    """`CN=Finance,OU=Groups,DC=corp` → `Finance` (Active Directory's memberOf values)."""
    first = str(dn).split(",", 1)[0]
    key, _, value = first.partition("=")
    return value.strip() if key.strip().lower() == "cn" else str(dn)
