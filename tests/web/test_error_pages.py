"""Error responses by client: a styled page for a browser, the sentence for HTMX, JSON for
API clients and /v1 — for a missing page, a refusal and an unexpected failure alike."""

from __future__ import annotations

import httpx

from app.main import create_app
from tests.live import live_server
from tests.support.scripted_engine import ScriptedEngine

BROWSER = {"Accept": "text/html,application/xhtml+xml"}


def test_each_client_gets_errors_in_its_own_form(make_settings) -> None:  # noqa: ANN001
    app = create_app(make_settings(), engine=ScriptedEngine())

    def broken() -> None:
        raise RuntimeError("a bug with a secret in its message")

    app.add_api_route("/broken", broken)
    with live_server(app) as live:
        page = httpx.get(f"{live.url}/broken", headers=BROWSER)
        assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
        assert "Something went wrong" in page.text and "Back to the chat" in page.text
        assert "secret" not in page.text, "no traceback or exception text"
        api = httpx.get(f"{live.url}/broken")
        assert api.status_code == 500 and "secret" not in api.json()["detail"]
        for failed in (page, api):  # sent from outside the app's middleware, headers all the same
            assert "default-src" in failed.headers["content-security-policy"]
            assert failed.headers["x-content-type-options"] == "nosniff"
            assert failed.headers["referrer-policy"] == "same-origin"
            assert len(failed.headers["x-request-id"]) == 32
        assert page.headers["x-request-id"] != api.headers["x-request-id"]

        missing = httpx.get(f"{live.url}/nothing/here", headers=BROWSER)
        assert missing.status_code == 404 and "There is no page at this address" in missing.text
        htmx = httpx.get(f"{live.url}/nothing/here", headers={**BROWSER, "HX-Request": "true"})
        assert htmx.status_code == 404 and htmx.text == "Not Found"
        assert httpx.get(f"{live.url}/nothing/here").json() == {"detail": "Not Found"}
        v1 = httpx.get(f"{live.url}/v1/nothing", headers=BROWSER)
        assert v1.status_code == 404 and v1.json() == {"detail": "Not Found"}
