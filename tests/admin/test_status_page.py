"""`/admin/status`: administrators see what runs now; everyone else is refused."""

from __future__ import annotations

import html
import re
import threading

import httpx

from tests.live import LiveServer, read_sse
from tests.support.web import Browserless

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


def field(page: str, name: str) -> str:
    match = re.search(rf'data-field="{name}">(.*?)</td>', page, flags=re.DOTALL)
    assert match, f"no {name} on the page"
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1))).strip()


def test_admin_sees_model_device_and_streams(client: Browserless, server: LiveServer) -> None:
    home = client.http.get("/admin")
    assert home.status_code == 303 and home.headers["location"] == "/admin/status"
    page = client.page("/admin/status")
    assert page.status_code == 200
    assert field(page.text, "model") == server.app.state.settings.base_model
    assert field(page.text, "device").startswith("cpu")
    assert field(page.text, "quantization") == "none"
    assert field(page.text, "gpu-memory") == "no GPU in use"
    assert field(page.text, "adapters") == "none (base model only)"
    assert field(page.text, "active-streams") == "0"
    assert field(page.text, "queue-depth") == "0 waiting"


def test_a_running_answer_shows_as_an_active_stream(
    client: Browserless, server: LiveServer
) -> None:
    server.app.state.settings.max_new_tokens = 2000
    response = client.post("/c", {"content": "Explain convexity."}, follow_redirects=True)
    stream_url = STREAM_RE.search(response.text).group(1)
    streaming, seen = threading.Event(), {}

    def read() -> None:
        with client.http.stream("GET", stream_url) as sse:
            for event, _ in read_sse(sse):
                if event == "token":
                    streaming.set()
                if event == "done":
                    return

    reader = threading.Thread(target=read)
    reader.start()
    assert streaming.wait(30)
    admin = Browserless(server.url)
    admin.http.cookies = client.http.cookies
    fragment = admin.http.get("/admin/status", headers={"HX-Request": "true"})
    seen["active"] = field(fragment.text, "active-streams")
    # HTMX refreshes only the status block, not the whole page.
    assert "<html" not in fragment.text and 'id="server-status"' in fragment.text
    [(conversation_id, message_id)] = re.findall(r"/c/(\w+)/messages/(\d+)/stream", stream_url)
    server.app.state.streams.stop(conversation_id=conversation_id, message_id=int(message_id))
    reader.join(30)
    assert seen["active"] == "1"


def test_non_admins_and_strangers_are_refused(server: LiveServer, user_client) -> None:  # noqa: ANN001
    assert user_client("teller-user").http.get("/admin/status").status_code == 403
    stranger = httpx.get(f"{server.url}/admin/status", headers={"Accept": "text/html"})
    assert stranger.status_code in (200, 303) and "/login" in str(stranger.url) + str(
        stranger.headers.get("location", "")
    )
