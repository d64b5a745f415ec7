"""`/metrics` after real traffic over a live server, read with prometheus-client's parser."""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx

from tests.live import LiveServer, read_sse
from tests.ops.promtext import scrape, value
from tests.support.web import Browserless

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')
STREAM_ROUTE = "/c/{conversation_id}/messages/{message_id}/stream"


def chat_once(client: Browserless, question: str) -> tuple[list[str], str]:
    """Post a question, read its answer's stream to the end: (tokens, final message HTML)."""
    response = client.post("/c", {"content": question}, follow_redirects=True)
    stream = STREAM_RE.search(response.text)
    assert stream, response.text[:300]
    tokens, done = [], ""
    with client.http.stream("GET", stream.group(1)) as sse:
        for event, data in read_sse(sse):
            if event == "token":
                tokens.append(html.unescape(data))
            elif event == "done":
                done = data
                break
    return tokens, done


def test_metrics_count_real_traffic(client: Browserless, server: LiveServer) -> None:
    before = scrape(server.url)
    tokens, done = chat_once(client, "What is a yield curve?")
    assert tokens and 'data-status="complete"' in done
    tokens_2, _ = chat_once(client, "And a forward rate?")
    assert httpx.get(f"{server.url}/no-such-page").status_code == 404
    after = scrape(server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("teller_answers_total", surface="chat", status="complete") == 2
    # Each answer ran to max_new_tokens (64) on the tiny model.
    assert delta("teller_tokens_generated_total", surface="chat") == 128
    assert delta("teller_time_to_first_token_seconds_count", surface="chat") == 2
    assert delta("teller_time_to_first_token_seconds_sum", surface="chat") > 0
    # One prompt forward each: the answers came one after the other.
    assert delta("teller_prefilled_prompts_total") == delta("teller_prefill_batches_total") == 2
    assert delta("teller_http_requests_total", method="GET", route=STREAM_ROUTE, status="200") == 2
    assert delta("teller_http_requests_total", method="POST", route="/c", status="303") == 2
    # Unknown paths are counted under one label, not one series per path.
    assert delta("teller_http_requests_total", method="GET", route="unmatched", status="404") == 1
    # Gauges are read at scrape time: nothing is generating or queued any more.
    assert value(after, "teller_active_streams") == 0
    assert value(after, "teller_queue_depth") == 0
    model = {dict(labels)["model"] for name, labels in after if name == "teller_model_info"}
    assert model == {server.app.state.settings.base_model}
    # No GPU on this machine: the GPU series exist but hold no samples.
    assert not [name for name, _ in after if name.startswith("teller_gpu_memory")]
    # Operators find every exported family in the deployment guide.
    guide = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text()
    families = {re.sub(r"_(total|count|sum|bucket|created|info)$", "", n) for n, _ in after}
    undocumented = sorted(f for f in families if f.startswith("teller_") and f not in guide)
    assert not undocumented


def test_every_response_carries_a_request_id(server: LiveServer) -> None:
    first = httpx.get(f"{server.url}/healthz")
    second = httpx.get(f"{server.url}/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    # A proxy's id is kept, so one request can be followed through both logs ...
    echoed = httpx.get(f"{server.url}/readyz", headers={"X-Request-ID": "lb-1234.abc"})
    assert echoed.headers["x-request-id"] == "lb-1234.abc"
    # ... but not one that could forge log lines.
    forged = httpx.get(f"{server.url}/readyz", headers={"X-Request-ID": 'x" injected'})
    assert forged.headers["x-request-id"] != 'x" injected'
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])


def test_health_and_readiness_stay_separate(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": True, "database": True}
