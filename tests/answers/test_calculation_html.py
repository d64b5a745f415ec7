"""How a stored answer's calculations are shown: recomputed, escaped, never mangled."""

from __future__ import annotations

from app.web.calculations import answer_html, classify, token_html
from app.web.templating import templates


def test_states_follow_a_fresh_computation() -> None:
    assert classify("percent(150 - 120, 120)", "25").state == "computed"
    assert classify("2 + 2", "5").state == "unverified"  # a figure the calculator does not give
    assert classify("9 * 9", None).state == "unverified"  # no result: not computed by Teller
    failed = classify("1 / 0", "[error: division by zero]")
    assert failed.state == "failed" and failed.reason == "division by zero"


def test_answer_html_keeps_expressions_whole_and_escapes_the_rest() -> None:
    text = "Sales <<calc: 2*3*4>> = 24 and <b>bold</b> & <<calc: 1/0>> = [error: division by zero]"
    html = answer_html(templates, text)
    assert '<code class="calc-expr">2*3*4</code>' in html  # markdown did not eat the stars
    assert '<strong class="calc-result">24</strong>' in html
    assert "calc-failed" in html and "not computed: division by zero" in html
    assert "<b>" not in html and "&lt;b&gt;" in html


def test_a_streamed_calculation_is_a_block_and_other_text_is_escaped() -> None:
    assert 'class="calc"' in token_html(templates, "<<calc: 1 + 1>> = 2")
    assert token_html(templates, "<script>") == "&lt;script&gt;"
    assert token_html(templates, "<<calc: 1 + 1>> = 2 and more") == (
        "&lt;&lt;calc: 1 + 1&gt;&gt; = 2 and more"
    )
