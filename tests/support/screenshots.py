"""Screenshots of the main pages at desktop and phone width, for the docs.

    .venv/bin/python -m tests.support.screenshots docs/screenshots

A real server (scripted answers, so the pictures do not depend on a model) with a few
conversations, a key and an adapter-free store, photographed in Debian's chromium.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from app.config import Settings
from app.main import create_app
from tests.live import LiveServer, live_server, read_sse
from tests.support.browser import DESKTOP, PHONE, chromium
from tests.support.scripted_engine import ScriptedEngine
from tests.support.web import (
    ADMIN_NAME,
    ADMIN_PASSWORD,
    Browserless,
    browser_sign_in,
    signed_in_client,
)

ANSWER = [
    "Operating cash flow rose to **$4.2 bn** (+12%), mostly from working capital:\n\n",
    "| Item | FY2022 | FY2023 |\n|---|---:|---:|\n",
    "| Net income | 3.1 | 3.4 |\n| Working capital | -0.4 | 0.2 |\n",
    "| Depreciation | 0.6 | 0.6 |\n\n",
    "Growth, as computed:\n\n```python\n4.2 / 3.75 - 1  # 0.12\n```\n\n",
    "Check the filing's cash flow statement before quoting these figures.",
]
QUESTIONS = (
    "Why did operating cash flow grow in FY2023?",
    "Summarise the covenant package of the term loan",
    "What is the effective tax rate in the 10-K?",
)
PAGES = (
    ("chat", "/"),
    ("conversation", None),
    ("search", "/search?q=covenant"),
    ("keys", "/settings/keys"),
    ("admin-audit", "/admin/audit"),
    ("admin-adapters", "/admin/adapters"),
)


def _answered(client: Browserless, question: str) -> str:
    page = client.post("/c", {"content": question}, follow_redirects=True)
    stream = re.search(r'sse-connect="([^"]+)"', page.text).group(1)
    with client.http.stream("GET", stream) as response:
        for _ in read_sse(response):
            pass
    return page.url.path


def _photograph(live: LiveServer, out: Path, conversation: str) -> list[Path]:
    made: list[Path] = []
    with chromium() as browser:
        for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            context = browser.new_context(viewport=viewport, device_scale_factor=1)
            page = context.new_page()
            browser_sign_in(page, live.url, ADMIN_NAME, ADMIN_PASSWORD)
            for name, path in PAGES:
                page.goto(live.url + (path or conversation))
                page.wait_for_load_state("networkidle")
                if name == "search" and label == "phone":
                    page.locator("label.nav-button").click()  # the sidebar holds the results
                target = out / f"{name}-{label}.png"
                page.screenshot(path=str(target))
                made.append(target)
            context.close()
    return made


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="teller-shots-"))
    settings = Settings(
        data_dir=root / "data", models_dir=root / "models", base_model="SmolLM2-135M-Instruct"
    )
    with live_server(create_app(settings, engine=ScriptedEngine(ANSWER))) as live:
        admin = signed_in_client(live, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        conversation = ""
        for question in reversed(QUESTIONS):
            conversation = _answered(admin, question)
        admin.page("/settings/keys")
        admin.post("/settings/keys", {"name": "quarterly notebook"})
        admin.page("/settings/keys")  # the new key is shown once: not in the picture
        for made in _photograph(live, out, conversation):
            print(made)  # noqa: T201 - the script's output
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
