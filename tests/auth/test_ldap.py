"""LDAP sign-in against a real OpenLDAP `slapd` started for this module (tests/auth/slapd.py).

The real /login form: the directory checks the password (Teller binds as the user), groups map
to Teller groups, injection in the user name gets nowhere, and a group change in the directory
shows at the next sign-in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from ldap3 import MODIFY_DELETE, Connection, Server
from ldap3.utils.conv import escape_filter_chars

from app.auth import ldap
from app.auth import service as accounts
from app.config import Settings
from app.groups import service as groups
from app.groups.schemas import GroupForm
from app.main import create_app
from app.store.identity_models import GroupMember, UserIdentity
from app.store.models import AuditRecord, User
from tests.auth.slapd import GROUPS, PEOPLE, SUFFIX, Directory, password, slapd_server
from tests.live import LiveServer, live_server
from tests.support.scripted_engine import ScriptedEngine
from tests.support.web import CSRF_RE


@dataclass
class Ldap:
    live: LiveServer
    directory: Directory

    def failures(self) -> list[dict]:
        with self.live.app.state.session_factory() as session:
            rows = session.query(AuditRecord).filter(AuditRecord.action == "auth.sign_in_failed")
            return [json.loads(r.details) for r in rows.order_by(AuditRecord.id)]


def ldap_settings(root: Path, directory: Directory, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": root / "data",
        "models_dir": root / "models",
        "base_model": "scripted",
        "ldap_url": directory.url,
        "ldap_bind_dn": directory.bind_dn,
        "ldap_base_dn": directory.base_dn,
        "ldap_admin_group": "admins",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def directory() -> Iterator[Directory]:
    with slapd_server() as running:
        yield running


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, directory: Directory) -> Iterator[Ldap]:
    settings = ldap_settings(tmp_path_factory.mktemp("ldap"), directory)
    with live_server(create_app(settings, engine=ScriptedEngine(["Hi"]))) as live:
        with live.app.state.session_factory() as session:
            accounts.create_user(
                session=session, username="root", password="root-password-1", admin=True
            )
            groups.save_group(
                session=session,
                form=GroupForm(name="Finance", external_name="finance", adapters=("base",)),
                actor_id=None,  # type: ignore[arg-type]
            )
        yield Ldap(live, directory)


def post_login(env: Ldap, username: str, secret: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=env.live.url, timeout=30)
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post(
        "/login", data={"username": username, "password": secret, "csrf_token": token}
    )
    return client, response


def test_directory_user_signs_in_with_groups_and_role(env: Ldap) -> None:
    client, response = post_login(env, "alice", password("alice"))
    assert response.status_code == 303 and response.headers["location"] == "/"
    assert client.get("/admin/groups").status_code == 200  # admins group → administrator
    with env.live.app.state.session_factory() as session:
        alice = accounts.get_user(session=session, username="alice")
        assert alice.role == "admin" and alice.password_hash is None
        identity = session.query(UserIdentity).filter_by(user_id=alice.id).one()
        assert (identity.provider, identity.subject) == ("ldap", f"uid=alice,{PEOPLE}")
        assert json.loads(identity.groups) == ["admins", "finance"]
        assert session.query(GroupMember).filter_by(user_id=alice.id).one().source == "ldap"
        sign_in = (
            session.query(AuditRecord)
            .filter(AuditRecord.action == "auth.sign_in", AuditRecord.actor_id == alice.id)
            .one()
        )
        assert json.loads(sign_in.details)["provider"] == "ldap"
        assert json.loads(sign_in.details)["groups"] == ["Finance"]

    _, response = post_login(env, "bob", password("bob"))
    assert response.status_code == 303
    with env.live.app.state.session_factory() as session:
        bob = accounts.get_user(session=session, username="bob")
        assert bob.role == "user"
        assert session.query(GroupMember).filter_by(user_id=bob.id).count() == 0


def test_wrong_or_empty_password_and_unknown_user_are_refused(env: Ldap) -> None:
    for username, secret in [("alice", "wrong-password"), ("alice", ""), ("nobody", "x-pass")]:
        client, response = post_login(env, username, secret)
        assert response.status_code in (400, 401), (username, response.status_code)
        assert "teller_session" not in client.cookies
    assert any(f.get("provider") == "ldap" for f in env.failures())


@pytest.mark.parametrize(
    "username",
    ["*", "alice)(uid=*", "st*", "*)(|(uid=*", "alice\\2a", "uid=alice,ou=people", "alice bob"],
)
def test_ldap_injection_in_the_user_name_gets_nowhere(env: Ldap, username: str) -> None:
    # `star` really exists with this password: a wildcard that reached a filter would find it.
    client, response = post_login(env, username, password("star"))
    assert response.status_code == 401
    assert "Wrong user name or password." in response.text
    assert "teller_session" not in client.cookies
    with env.live.app.state.session_factory() as session:
        assert session.query(User).filter(User.username.like("%star%")).count() == 0


def test_names_are_escaped_where_they_go() -> None:
    """Beyond the pattern check, the name is escaped for a DN and for a filter."""
    assert ldap._bind_name("uid={username},ou=p", "a,b=c+d") == "uid=a\\,b\\=c\\+d,ou=p"
    assert escape_filter_chars("a*)(") == "a\\2a\\29\\28"


def test_local_admin_keeps_their_password_and_an_unreachable_directory_is_said(
    env: Ldap, tmp_path: Path
) -> None:
    _, response = post_login(env, "root", "root-password-1")
    assert response.status_code == 303

    settings = ldap_settings(tmp_path, env.directory, ldap_url="ldap://127.0.0.1:9")
    with live_server(create_app(settings, engine=ScriptedEngine(["Hi"]))) as live:
        with live.app.state.session_factory() as session:
            accounts.create_user(
                session=session, username="root", password="root-password-1", admin=True
            )
        down = Ldap(live, env.directory)
        _, response = post_login(down, "alice", password("alice"))
        assert response.status_code == 401
        assert "cannot be reached" in response.text
        _, response = post_login(down, "root", "root-password-1")
        assert response.status_code == 303


def test_a_group_removed_in_the_directory_is_gone_at_the_next_sign_in(env: Ldap) -> None:
    post_login(env, "alice", password("alice"))
    admin = Connection(
        Server(env.directory.url),
        user=f"cn=admin,{SUFFIX}",
        password="admin-secret",  # noqa: S106 - the throwaway directory's root
        auto_bind=True,
    )
    admin.modify(f"cn=finance,{GROUPS}", {"member": [(MODIFY_DELETE, [f"uid=alice,{PEOPLE}"])]})
    assert admin.result["description"] == "success"
    admin.unbind()
    _, response = post_login(env, "alice", password("alice"))
    assert response.status_code == 303
    with env.live.app.state.session_factory() as session:
        alice = accounts.get_user(session=session, username="alice")
        assert session.query(GroupMember).filter_by(user_id=alice.id).count() == 0
        synced = [
            json.loads(r.details)
            for r in session.query(AuditRecord).filter(
                AuditRecord.action == "group.membership_synced"
            )
        ]
    expected = {"provider": "ldap", "added": [], "removed": ["Finance"]}
    assert any(expected.items() <= change.items() for change in synced)
