"""Calculations in an answer's text, shown as their own inline blocks.

An answer stores each calculation as written (`<<calc: EXPR>> = RESULT`, see
`app.answers.calculator`). On the page every form is evaluated again and shown as one of:

- computed: the stored result is what the calculator gives now (the calculator wrote it);
- failed: the calculator could not compute it (`= [error: ...]`, shown with its reason);
- unverified: no result, or one the calculator does not give — text the model wrote itself
  (after the per-answer limit, say) — marked as not computed by Teller.

So a figure shown as computed is one the calculator stands behind, whoever wrote the text.
The rest of the answer goes through the usual markdown renderer; forms are swapped for
placeholders first so markdown cannot mangle an expression (`2*3*4` is no emphasis).
"""

from __future__ import annotations

import html
import secrets
from dataclasses import dataclass
from typing import Any

from app.answers.calculator import FORM, calculate
from app.web.markdown import render_markdown


@dataclass(frozen=True)
class ShownCalculation:
    expression: str
    result: str
    state: str  # computed | failed | unverified
    reason: str = ""


def classify(expression: str, stored: str | None) -> ShownCalculation:
    """What the page says about one form, recomputed now."""
    expression = expression.strip()
    fresh = calculate(expression)
    if stored is None:
        return ShownCalculation(expression, "", "unverified", "not computed by Teller")
    if stored.startswith("[error:") or fresh.value is None:
        reason = fresh.error or stored.removeprefix("[error:").removesuffix("]").strip()
        return ShownCalculation(expression, "", "failed", reason)
    if stored == fresh.result_text:
        return ShownCalculation(expression, stored, "computed")
    return ShownCalculation(expression, stored, "unverified", "not computed by Teller")


def calculation_html(templates: Any, shown: ShownCalculation) -> str:
    return templates.get_template("partials/calculation.html").render(calc=shown).strip()


def answer_html(templates: Any, text: str) -> str:
    """An assistant answer as safe HTML, each calculation as its block."""
    forms = list(FORM.finditer(text))
    if not forms:
        return render_markdown(text)
    nonce = secrets.token_hex(6)
    pieces, last = [], 0
    for index, form in enumerate(forms):
        pieces += [text[last : form.start()], f"CALC{nonce}N{index}E"]
        last = form.end()
    rendered = render_markdown("".join([*pieces, text[last:]]))
    for index, form in enumerate(forms):
        shown = classify(form["expression"], form["result"])
        rendered = rendered.replace(f"CALC{nonce}N{index}E", calculation_html(templates, shown), 1)
    return rendered


def token_html(templates: Any, text: str) -> str:
    """A streamed piece of an answer: a whole calculation as its block, other text escaped
    (the calculator loop sends each calculation as one piece)."""
    form = FORM.fullmatch(text)
    if form is None:
        return html.escape(text)
    return calculation_html(templates, classify(form["expression"], form["result"]))
