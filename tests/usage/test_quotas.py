"""Token quotas on the chat and on `/v1` (the real openai client), raised at once by an admin;
the usage page, its CSV and `/metrics` show the tokens just used.

The scripted engine counts 3 prompt tokens and 2 answer tokens per answer: 5 a call.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import openai
import pytest

from app.answers.limits import LimitExceeded
from app.auth.service import create_user, get_user
from app.store import identity_crud
from app.store.models import AuditRecord
from app.usage import service as usage
from tests.support.company import Company, start_company

PER_ANSWER = 5


@pytest.fixture(scope="module")
def company(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[Company]:
    with start_company(tmp_path_factory.mktemp("quotas"), tiny_llama_dir) as running:
        yield running


def ask(company: Company, name: str) -> str:
    answer = company.api(name).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "hi"}]
    )
    return answer.choices[0].message.content


def set_quota(
    company: Company, name: str, per_day: str = "", per_month: str = ""
) -> httpx.Response:
    boss = company.person("boss", admin=True)
    boss.page("/admin/usage")
    return boss.post(
        "/admin/usage/quotas",
        {"username": name, "tokens_per_day": per_day, "tokens_per_month": per_month},
    )


def seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    return 86400 - (now.hour * 3600 + now.minute * 60 + now.second)


def test_quota_on_v1_and_chat_then_raised_at_once(company: Company) -> None:
    company.person("quinn")
    assert set_quota(company, "quinn", per_day="8").status_code == 303
    assert ask(company, "quinn") == "Fine answer."  # 0 of 8 used
    assert ask(company, "quinn") == "Fine answer."  # 5 of 8: still under, may start
    with pytest.raises(openai.RateLimitError) as refused:
        ask(company, "quinn")  # 10 of 8
    response = refused.value.response
    assert abs(int(response.headers["retry-after"]) - seconds_to_midnight()) < 30
    message = response.json()["error"]["message"]
    assert "You have used 10 tokens today; the quota is 8 (your own quota)" in message
    assert "resets at midnight UTC" in message

    # The chat says the same under the message box, and stores nothing.
    quinn = company.person("quinn")
    chat = quinn.http.post(
        "/c",
        data={"content": "hello", "csrf_token": quinn.csrf},
        headers={"HX-Request": "true", "X-CSRF-Token": quinn.csrf},
    )
    assert chat.status_code == 429
    assert chat.headers["HX-Retarget"] == "#composer-error"
    assert "the quota is 8" in chat.text and int(chat.headers["Retry-After"]) > 0

    # An admin raises it: the very next call goes through.
    assert set_quota(company, "quinn", per_day="1000").status_code == 303
    assert ask(company, "quinn") == "Fine answer."


def test_the_tighter_of_user_and_group_quota_wins(company: Company) -> None:
    boss = company.person("boss", admin=True)
    company.person("rita")
    set_quota(company, "rita", per_day="1000", per_month="5000")
    made = boss.post(
        "/admin/groups",
        {"name": "Interns", "adapter": ["base", "alpha"], "tokens_per_day": "6"},
    )
    assert made.status_code == 303
    with company.live.app.state.session_factory() as session:
        group = identity_crud.find_group(session=session, name="Interns")
        rita = get_user(session=session, username="rita")
        group_id, rita_id = group.id, rita.id
    assert boss.post(f"/admin/groups/{group_id}/members", {"username": "rita"}).status_code == 303
    assert ask(company, "rita") == "Fine answer."  # 0 of 6
    assert ask(company, "rita") == "Fine answer."  # 5 of 6
    with pytest.raises(openai.RateLimitError) as refused:
        ask(company, "rita")
    assert "the quota is 6 (the group Interns)" in refused.value.response.json()["error"]["message"]

    # Raising the group's quota frees every member at once.
    raised = boss.post(
        f"/admin/groups/{group_id}",
        {"name": "Interns", "adapter": ["base", "alpha"], "tokens_per_day": "1,000"},
    )
    assert raised.status_code == 303
    assert ask(company, "rita") == "Fine answer."

    with company.live.app.state.session_factory() as session:
        changes = [
            json.loads(r.details)
            for r in session.query(AuditRecord).filter(AuditRecord.action == "quota.changed")
        ]
        assert usage.limits_for(session=session, user_id=rita_id)
    expected = {
        "scope": "group",
        "group": "Interns",
        "before": {"tokens_per_day": 6, "tokens_per_month": None},
        "after": {"tokens_per_day": 1000, "tokens_per_month": None},
    }
    assert any(expected.items() <= change.items() for change in changes)
    assert all(change["ip"] == "127.0.0.1" for change in changes), "who changed it, from where"
    assert any(c["scope"] == "user" and c["user"] == "rita" for c in changes)


def test_usage_page_csv_and_metrics_show_the_tokens_just_used(company: Company) -> None:
    company.person("uma")
    boss = company.person("boss", admin=True)
    with company.live.app.state.session_factory() as session:
        interns = identity_crud.find_group(session=session, name="Interns").id
    boss.post(f"/admin/groups/{interns}/members", {"username": "uma"})  # groups exist now
    for _ in range(3):
        ask(company, "uma")
    page = html.unescape(boss.page("/admin/usage?days=7").text)
    row = page.split('data-row="uma"')[1].split("</tr>")[0]
    assert f">{3 * PER_ANSWER}<" in row and ">3<" in row  # tokens, answers
    assert "<svg" in page and "Tokens per day" in page

    text = boss.http.get("/admin/usage.csv?days=7").text
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["user"] == "uma"]
    assert rows == [
        {
            "day": datetime.now(UTC).date().isoformat(),
            "user": "uma",
            "groups": "Interns",
            "surface": "api",
            "adapter": "alpha",
            "answers": "3",
            "prompt_tokens": "9",
            "completion_tokens": "6",
            "total_tokens": "15",
        }
    ]
    metrics = httpx.get(f"{company.live.url}/metrics").text
    assert 'teller_usage_tokens_total{kind="completion",surface="api"}' in metrics
    assert 'teller_usage_tokens_today_by_group{group="Interns"}' in metrics
    assert 'teller_usage_tokens_today_by_adapter{adapter="alpha"}' in metrics
    assert "uma" not in metrics  # users are never a label


def test_bad_quota_forms_say_what_to_fix(company: Company) -> None:
    for form, words in [
        ({"username": "nobody", "tokens_per_day": "5"}, "No user is named 'nobody'"),
        ({"username": "boss", "tokens_per_day": "-1"}, "whole number of tokens"),
        ({"username": "boss", "tokens_per_month": "1e9"}, "whole number of tokens"),
    ]:
        response = set_quota(
            company,
            form["username"],
            form.get("tokens_per_day", ""),
            form.get("tokens_per_month", ""),
        )
        assert response.status_code == 400
        assert words in html.unescape(response.text)


# ---- the windows, without a server -------------------------------------------------------


def test_windows_reset_at_midnight_and_on_the_first(session_factory) -> None:  # noqa: ANN001
    with session_factory() as session:
        user = create_user(session=session, username="w", password="w-password-12")
        identity_crud.set_user_quota(session=session, user_id=user.id, per_day=None, per_month=10)
        session.commit()
        identity_crud.add_usage(
            session=session,
            user_id=user.id,
            day=date(2026, 1, 3),
            surface="api",
            adapter="base",
            prompt_tokens=4,
            completion_tokens=6,
        )
        late = datetime(2026, 1, 31, 23, 0, tzinfo=UTC)
        with pytest.raises(LimitExceeded) as refused:
            usage.check_quota(session=session, user_id=user.id, now=late)
        assert refused.value.retry_after == 3600
        assert "this month" in refused.value.message and "01 February" in refused.value.message
        usage.check_quota(session=session, user_id=user.id, now=datetime(2026, 2, 1, tzinfo=UTC))

        identity_crud.set_user_quota(session=session, user_id=user.id, per_day=10, per_month=None)
        session.commit()
        noon = datetime(2026, 1, 3, 12, 0, tzinfo=UTC)
        with pytest.raises(LimitExceeded) as refused:
            usage.check_quota(session=session, user_id=user.id, now=noon)
        assert refused.value.retry_after == 12 * 3600
        usage.check_quota(session=session, user_id=user.id, now=datetime(2026, 1, 4, tzinfo=UTC))
