"""The route table: every route needs sign-in, and admin routes need an administrator.

It walks `app.routes`, so routes other features add later are covered without editing this.
"""

from __future__ import annotations

import re

import httpx

from app.deps import require_admin
from tests.support.routes import route_table
from tests.support.web import (
    ADMIN_NAME,
    ADMIN_PASSWORD,
    USER_PASSWORD,
    create_account,
    signed_in_client,
)

PUBLIC = (
    "/login",
    "/login/oidc",  # sign-in with the identity provider, and its way back
    "/login/oidc/callback",
    "/setup",
    "/healthz",
    "/readyz",
    "/metrics",
    "/favicon.ico",  # the browser asks for it before anyone signs in
)
PARAM_RE = re.compile(r"\{([^}:]+)(:[^}]+)?\}")


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(("/static", "/v1/", "/v1"))


def concrete(path: str) -> str:
    """A path with every parameter filled in (values need not exist: auth comes first)."""
    return PARAM_RE.sub(
        lambda m: "0" * 32 if m.group(1).endswith("_id") and "conversation" in m.group(1) else "1",
        path,
    )


def calls(dependant) -> set:  # noqa: ANN001
    found = {dependant.call}
    for sub in dependant.dependencies:
        found |= calls(sub)
    return found


def routes(app) -> list[tuple[str, str, object]]:  # noqa: ANN001
    """(method, full path, route) for every non-public route, nested routers included."""
    return [entry for entry in route_table(app) if not is_public(entry[1])]


def is_bearer(path: str) -> bool:
    """API routes authenticated by a bearer token: 401, never a redirect to a form."""
    return path.startswith(("/admin/api/", "/v1"))


def test_every_route_refuses_anonymous_requests(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        create_account(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        table = routes(server.app)
        assert len(table) >= 10, "the route table looks empty"
        anonymous = httpx.Client(base_url=server.url, timeout=30)
        problems = []
        for method, path, _ in table:
            url = concrete(path)
            plain = anonymous.request(method, url)
            if plain.status_code != 401:
                problems.append(f"{method} {path}: {plain.status_code} without sign-in")
            if is_bearer(path):
                continue
            htmx = anonymous.request(method, url, headers={"HX-Request": "true"})
            if htmx.status_code != 401 or not htmx.headers.get("HX-Redirect", "").startswith(
                "/login"
            ):
                problems.append(f"{method} {path}: HTMX got {htmx.status_code} without redirect")
            if method == "GET":
                page = anonymous.get(url, headers={"Accept": "text/html"})
                is_stream = "stream" in path
                if not is_stream and (
                    page.status_code != 303 or not page.headers["location"].startswith("/login")
                ):
                    problems.append(f"GET {path}: page got {page.status_code}, not a sign-in")
        assert not problems, "\n".join(problems)


def test_pages_send_anonymous_visitors_to_sign_in_and_back(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        anonymous = httpx.Client(base_url=server.url, headers={"Accept": "text/html"})
        first = anonymous.get("/")
        assert first.status_code == 303 and first.headers["location"] == "/setup"
        create_account(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        page = anonymous.get("/admin/users?x=1")
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=%2Fadmin%2Fusers%3Fx%3D1"
        assert anonymous.get("/setup").headers["location"] == "/login"
        # HTMX (say, a message sent after the session expired) comes back to the page it was on.
        htmx = anonymous.post(
            "/c/0/messages",
            headers={"HX-Request": "true", "HX-Current-URL": f"{server.url}/c/0?x=1"},
        )
        assert htmx.status_code == 401
        assert htmx.headers["HX-Redirect"] == "/login?next=%2Fc%2F0%3Fx%3D1"
        elsewhere = anonymous.post(
            "/c", headers={"HX-Request": "true", "HX-Current-URL": "https://evil.example/x"}
        )
        assert elsewhere.headers["HX-Redirect"] == "/login"


def test_users_are_refused_every_admin_route(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        create_account(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        user = signed_in_client(server, "bob", USER_PASSWORD)
        admin_only = [
            (method, path, route)
            for method, path, route in routes(server.app)
            if path.startswith("/admin")
            or (hasattr(route, "dependant") and require_admin in calls(route.dependant))
        ]
        assert any(p == "/admin/users" for _, p, _ in admin_only)
        assert any(p == "/admin/audit" for _, p, _ in admin_only)
        problems = []
        for method, path, route in admin_only:
            response = user.http.request(
                method, concrete(path), headers={"X-CSRF-Token": user.csrf}
            )
            needs_admin = hasattr(route, "dependant") and require_admin in calls(route.dependant)
            allowed = {403} if needs_admin else {401, 403}
            if response.status_code not in allowed:
                problems.append(f"{method} {path}: {response.status_code} for a plain user")
        assert not problems, "\n".join(problems)
        # The same user reaches their own pages.
        assert user.page("/").status_code == 200
        assert user.page("/account").status_code == 200


def test_state_changing_routes_all_check_csrf(scripted_server) -> None:  # noqa: ANN001
    """Signed in but without the token, every POST/PUT/PATCH/DELETE is refused with 403."""
    with scripted_server() as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        problems = []
        for method, path, _ in routes(server.app):
            if method in ("GET", "OPTIONS") or path.startswith("/admin/api/"):
                continue  # /admin/api/ is the bearer-token API (no cookies, no CSRF)
            response = admin.http.request(method, concrete(path))
            if response.status_code != 403 or "CSRF" not in response.text:
                problems.append(f"{method} {path}: {response.status_code} without a CSRF token")
        assert not problems, "\n".join(problems)
