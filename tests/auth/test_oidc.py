"""OpenID Connect sign-in against a real provider (npm `oidc-provider`, started per module).

The whole flow runs over HTTP as a browser would: Teller's `/login/oidc`, the provider's
authorization endpoint and sign-in form, the callback, the code exchange with PKCE, the ID
token checked against the provider's published keys. Then every way it must fail.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.auth import oidc
from app.auth import service as accounts
from app.groups import service as groups
from app.groups.schemas import GroupForm
from app.main import create_app
from app.store.identity_models import GroupMember, UserIdentity
from app.store.models import AuditRecord, User
from tests.auth.oidc import ACCOUNTS, CLIENT_ID, OidcServer, new_key, oidc_provider, settings_for
from tests.live import LiveServer, free_port, live_server
from tests.support.scripted_engine import ScriptedEngine
from tests.support.web import CSRF_RE


@dataclass
class Sso:
    live: LiveServer
    provider: OidcServer

    def audit(self, action: str) -> list[dict]:
        with self.live.app.state.session_factory() as session:
            rows = session.query(AuditRecord).filter(AuditRecord.action == action)
            return [json.loads(r.details) for r in rows.order_by(AuditRecord.id)]


@pytest.fixture(scope="module")
def sso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sso]:
    port = free_port()
    settings = settings_for(tmp_path_factory.mktemp("oidc"), f"http://127.0.0.1:{port}")
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
        callback = f"{live.url}/login/oidc/callback"
        with oidc_provider(port, [callback], ACCOUNTS) as provider:
            yield Sso(live, provider)


def start(client: httpx.Client, base: str, next_url: str = "/") -> httpx.Response:
    """Teller's sign-in button: a 303 to the provider's authorization endpoint."""
    response = client.get(f"{base}/login/oidc", params={"next": next_url})
    assert response.status_code == 303, response.text
    return response


def provider_login(client: httpx.Client, authorize_url: str, login: str) -> httpx.Response:
    """The provider's sign-in form, filled in; returns its redirect to Teller's callback
    (not followed)."""
    page = client.get(authorize_url, follow_redirects=True)
    assert page.status_code == 200 and 'name="login"' in page.text, page.text[:500]
    action = re.search(r'<form[^>]*action="([^"]+)"', page.text).group(1)
    response = client.post(
        str(page.url.join(action)),
        data={"prompt": "login", "login": login, "password": "any"},
    )
    while (
        response.status_code in (302, 303)
        and "/login/oidc/callback" not in response.headers["location"]
    ):
        response = client.get(str(response.url.join(response.headers["location"])))
    assert "/login/oidc/callback" in response.headers.get("location", ""), response.text[:500]
    return response


def sign_in(sso: Sso, login: str, next_url: str = "/") -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(timeout=30)
    begun = start(client, sso.live.url, next_url)
    back = provider_login(client, begun.headers["location"], login)
    return client, client.get(back.headers["location"])


def test_first_sign_in_creates_the_account_maps_groups_and_lands_where_asked(sso: Sso) -> None:
    client, response = sign_in(sso, "alice", next_url="/account")
    assert response.status_code == 303 and response.headers["location"] == "/account"
    page = client.get(f"{sso.live.url}/account")
    assert page.status_code == 200 and "alice" in page.text
    with sso.live.app.state.session_factory() as session:
        user = accounts.get_user(session=session, username="alice")
        assert user is not None and user.role == "user" and user.password_hash is None
        identity = session.query(UserIdentity).filter_by(user_id=user.id).one()
        assert identity.subject == f"{sso.provider.issuer}|alice"
        assert json.loads(identity.groups) == ["emea", "finance"]
        member = session.query(GroupMember).filter_by(user_id=user.id).one()
        assert member.source == "oidc"
    sign_ins = [d for d in sso.audit("auth.sign_in") if d.get("provider") == "oidc"]
    assert sign_ins[-1]["groups"] == ["Finance"]
    # The group named at sign-in that no Teller group maps is offered on /admin/groups.
    with sso.live.app.state.session_factory() as session:
        from app.store import identity_crud

        assert "emea" in identity_crud.seen_external_groups(session=session)

    # A second sign-in finds the same account by subject.
    again, response = sign_in(sso, "alice")
    assert response.status_code == 303
    with sso.live.app.state.session_factory() as session:
        assert session.query(User).filter(User.username == "alice").count() == 1


def test_admin_group_makes_an_administrator(sso: Sso) -> None:
    client, response = sign_in(sso, "dave")
    assert response.status_code == 303
    assert client.get(f"{sso.live.url}/admin/groups").status_code == 200
    with sso.live.app.state.session_factory() as session:
        assert accounts.get_user(session=session, username="dave").role == "admin"


def test_a_name_taken_by_a_local_account_is_not_taken_over(sso: Sso) -> None:
    client, response = sign_in(sso, "root")
    assert response.status_code == 403
    assert "already belongs to an account" in response.text
    assert "teller_session" not in client.cookies
    with sso.live.app.state.session_factory() as session:
        root = accounts.get_user(session=session, username="root")
        assert session.query(UserIdentity).filter_by(user_id=root.id).count() == 0


def test_wrong_state_is_refused_and_the_request_cannot_be_retried(sso: Sso) -> None:
    client = httpx.Client(timeout=30)
    begun = start(client, sso.live.url)
    back = provider_login(client, begun.headers["location"], "alice")
    query = parse_qs(urlsplit(back.headers["location"]).query)
    wrong = client.get(
        f"{sso.live.url}/login/oidc/callback",
        params={"code": query["code"][0], "state": "not-the-state"},
    )
    assert wrong.status_code == 400
    assert "does not match this browser" in wrong.text
    assert 'name="password"' in wrong.text  # the password form is still there
    # The sign-in request was used up: even the right state now fails.
    right = client.get(back.headers["location"])
    assert right.status_code == 400 and "start again" in right.text
    assert any("state" in d["reason"] for d in sso.audit("auth.sign_in_failed"))


def test_a_callback_in_another_browser_is_refused(sso: Sso) -> None:
    client = httpx.Client(timeout=30)
    begun = start(client, sso.live.url)
    back = provider_login(client, begun.headers["location"], "alice")
    other = httpx.Client(timeout=30)  # no teller_oidc cookie: not the browser that started
    response = other.get(back.headers["location"])
    assert response.status_code == 400
    assert "No sign-in was started in this browser" in response.text


def test_a_code_from_another_sign_in_fails_pkce(sso: Sso) -> None:
    """An attacker's code injected into the victim's callback: the victim's PKCE verifier
    does not match the code, so the provider refuses the exchange."""
    attacker = httpx.Client(timeout=30)
    stolen = provider_login(attacker, start(attacker, sso.live.url).headers["location"], "alice")
    code = parse_qs(urlsplit(stolen.headers["location"]).query)["code"][0]
    victim = httpx.Client(timeout=30)
    begun = start(victim, sso.live.url)
    state = parse_qs(urlsplit(begun.headers["location"]).query)["state"][0]
    response = victim.get(
        f"{sso.live.url}/login/oidc/callback", params={"code": code, "state": state}
    )
    assert response.status_code == 400
    assert "refused the sign-in code" in response.text
    assert "teller_session" not in victim.cookies


def test_provider_error_is_shown(sso: Sso) -> None:
    client = httpx.Client(timeout=30)
    start(client, sso.live.url)
    response = client.get(
        f"{sso.live.url}/login/oidc/callback",
        params={"error": "access_denied", "error_description": "End-User aborted interaction"},
    )
    assert response.status_code == 400
    assert "End-User aborted interaction" in response.text


# ---- the ID token checks, on tokens signed with the provider's real key (or a forged one) --


def claims(sso: Sso, **overrides: object) -> dict:
    now = int(time.time())
    values: dict[str, object] = {
        "iss": sso.provider.issuer,
        "sub": "alice",
        "aud": CLIENT_ID,
        "exp": now + 300,
        "iat": now,
        "nonce": "the-nonce",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "expired"),
        ({"nonce": "another-nonce"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"aud": "another-client"}, "aud"),
        ({"iss": "https://evil.example"}, "iss"),
        ({"exp": None}, "exp"),
    ],
)
def test_id_token_claims_are_checked(sso: Sso, overrides: dict, why: str) -> None:
    provider = oidc.OidcProvider(sso.live.app.state.settings)
    token = sso.provider.sign(claims(sso, **overrides))
    with pytest.raises(oidc.OidcError, match=why):
        provider.validate_id_token(token, nonce="the-nonce")


def test_a_valid_token_passes_and_forged_ones_do_not(sso: Sso) -> None:
    provider = oidc.OidcProvider(sso.live.app.state.settings)
    good = provider.validate_id_token(sso.provider.sign(claims(sso)), nonce="the-nonce")
    assert good["sub"] == "alice"

    # Same kid, another key: the signature does not verify against the published key.
    forged = sso.provider.sign(claims(sso), key=new_key(sso.provider.key.kid))
    with pytest.raises(oidc.OidcError, match="not valid"):
        provider.validate_id_token(forged, nonce="the-nonce")
    # A key id the provider never published (refetched once, still unknown).
    stranger = sso.provider.sign(claims(sso), key=new_key("stranger"))
    with pytest.raises(oidc.OidcError, match="not valid"):
        provider.validate_id_token(stranger, nonce="the-nonce")
    # No signature at all (`alg: none`), and a token tampered with after signing.
    import base64

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none'})}.{b64(claims(sso))}."
    with pytest.raises(oidc.OidcError, match="not valid"):
        provider.validate_id_token(unsigned, nonce="the-nonce")
    header, _, signature = sso.provider.sign(claims(sso)).split(".")
    tampered = f"{header}.{b64(claims(sso, sub='dave'))}.{signature}"
    with pytest.raises(oidc.OidcError, match="not valid"):
        provider.validate_id_token(tampered, nonce="the-nonce")


# ---- an unreachable provider, and local accounts switched off -----------------------------


def test_unreachable_provider_gives_a_clear_page_and_local_sign_in_still_works(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, f"http://127.0.0.1:{free_port()}", oidc_timeout_seconds=2)
    with live_server(create_app(settings, engine=ScriptedEngine(["Hi"]))) as live:
        with live.app.state.session_factory() as session:
            accounts.create_user(
                session=session, username="root", password="root-password-1", admin=True
            )
        client = httpx.Client(timeout=30)
        page = client.get(f"{live.url}/login/oidc")
        assert page.status_code == 503
        assert "cannot be reached" in page.text and "Sign in with your Teller password" in page.text
        assert 'name="password"' in page.text
        token = CSRF_RE.search(page.text).group(1)
        signed = client.post(
            f"{live.url}/login",
            data={"username": "root", "password": "root-password-1", "csrf_token": token},
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/"


def test_local_accounts_off_leaves_only_the_provider(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, f"http://127.0.0.1:{free_port()}", local_accounts=False)
    with live_server(create_app(settings, engine=ScriptedEngine(["Hi"]))) as live:
        client = httpx.Client(timeout=30)
        page = client.get(f"{live.url}/login")  # no /setup detour with no local accounts
        assert page.status_code == 200
        assert "Sign in with Corp SSO" in page.text and 'name="password"' not in page.text
        with live.app.state.session_factory() as session:
            accounts.create_user(
                session=session, username="root", password="root-password-1", admin=True
            )
        token = CSRF_RE.search(client.get(f"{live.url}/login").text)
        csrf = token.group(1) if token else client.cookies.get("teller_csrf", "")
        refused = client.post(
            f"{live.url}/login",
            data={"username": "root", "password": "root-password-1", "csrf_token": csrf},
        )
        assert refused.status_code == 401
