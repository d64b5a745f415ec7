"""Templates are handed who is signed in; none looks anyone up itself."""

from __future__ import annotations

import re

from app.web.templating import TEMPLATES_DIR, templates


def test_no_template_looks_up_the_signed_in_user() -> None:
    assert "signed_in" not in templates.env.globals
    lookups = [
        path.relative_to(TEMPLATES_DIR)
        for path in TEMPLATES_DIR.rglob("*.html")
        if re.search(r"signed_in\s*\(|session_factory|app\.state", path.read_text())
    ]
    assert lookups == []
