"""A user of group A cannot see or use group B's adapter: chat picker, chat answers, `/v1/models`,
`/v1` requests. Groups are made through the real /admin/groups forms; a removal takes effect on
the user's very next request."""

from __future__ import annotations

import html
import json
import re

import openai
import pytest

from app.auth.service import get_user
from app.knowledge import service as knowledge
from app.store import knowledge_crud
from app.store.models import AuditRecord
from tests.live import read_sse
from tests.support.company import Company

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


def model_ids(company: Company, name: str) -> set[str]:
    return {m.id for m in company.api(name).models.list().data}


def group_id(company: Company, name: str) -> int:
    page = company.person("boss", admin=True).page("/admin/groups").text
    match = re.search(rf'id="group-(\d+)" data-group="{re.escape(name)}"', page)
    assert match, f"no group {name} on the page"
    return int(match.group(1))


def stream_answer(company: Company, name: str, path: str) -> str:
    """Open the pending answer's stream on `path`'s page; return the final message HTML."""
    browser = company.person(name)
    page = browser.page(path)
    url = STREAM_RE.search(page.text).group(1)
    with browser.http.stream("GET", url) as response:
        for event, data in read_sse(response):
            if event == "done":
                return html.unescape(data)
    raise AssertionError("the stream ended without a done event")


def test_without_groups_everyone_sees_everything(company: Company) -> None:
    ids = model_ids(company, "ann")
    assert {"alpha", "alpha@1", "beta", "beta@1"} <= ids and len(ids) == 5  # and the base


def test_groups_separate_departments_on_every_surface(company: Company) -> None:
    boss = company.person("boss", admin=True)
    base_id = next(
        i for i in model_ids(company, "boss") if i not in ("alpha", "beta") and "@" not in i
    )
    company.person("ann")
    company.person("ben")
    made = boss.post(
        "/admin/groups",
        {
            "name": "Dept A",
            "adapter": ["base", "alpha"],
            "default_adapter": "alpha",
            "tokens_per_day": "",
        },
    )
    assert made.status_code == 303, made.text
    boss.post("/admin/groups", {"name": "Dept B", "adapter": ["beta"]})
    a, b = group_id(company, "Dept A"), group_id(company, "Dept B")
    assert boss.post(f"/admin/groups/{a}/members", {"username": "ann"}).status_code == 303
    assert boss.post(f"/admin/groups/{b}/members", {"username": "Ben"}).status_code == 303

    # /v1/models: each sees only their own.
    assert model_ids(company, "ann") == {base_id, "alpha", "alpha@1"}
    assert model_ids(company, "ben") == {"beta", "beta@1"}
    assert {"alpha", "beta", base_id} <= model_ids(company, "boss")  # admins see everything

    # /v1 requests: another group's model is absent, word for word like a made-up one.
    absent = company.http("ann", "GET", "/v1/models/beta")
    made_up = company.http("ann", "GET", "/v1/models/gamma")
    assert absent.status_code == made_up.status_code == 404
    assert absent.json()["error"]["message"].replace("beta", "X") == made_up.json()["error"][
        "message"
    ].replace("gamma", "X")
    with pytest.raises(openai.NotFoundError) as refused:
        company.api("ann").chat.completions.create(
            model="beta", messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        company.api("ben").chat.completions.create(
            model=base_id, messages=[{"role": "user", "content": "hi"}]
        )
    before = len(company.engine.requests)
    answer = company.api("ann").chat.completions.create(
        model="alpha@1", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "Fine answer."
    assert company.engine.requests[before].adapter == "alpha@1"

    # The chat picker offers only what the groups grant; "Default" names the group default.
    ann = company.person("ann")
    page = ann.page("/").text
    assert 'value="alpha"' in page and 'value="beta"' not in page
    assert "Default (alpha)" in page
    # Picking another group's adapter is refused with a sentence, nothing is stored.
    refused_page = ann.post("/c", {"content": "hello", "adapter": "beta"})
    assert refused_page.status_code == 400
    assert "no adapter named 'beta' is installed" in html.unescape(refused_page.text)
    # A "Default" chat answers with the group's default adapter.
    made_chat = ann.post("/c", {"content": "What is EBITDA?"})
    assert made_chat.status_code == 303
    before = len(company.engine.requests)
    done = stream_answer(company, "ann", made_chat.headers["location"])
    assert 'data-status="complete"' in done
    assert company.engine.requests[before].adapter == "alpha@1"


def test_a_user_removed_from_a_group_loses_it_on_the_next_request(company: Company) -> None:
    boss = company.person("boss", admin=True)
    ann = company.person("ann")
    chat = ann.post("/c", {"content": "First question", "adapter": "alpha"})
    assert chat.status_code == 303
    assert 'data-status="complete"' in stream_answer(company, "ann", chat.headers["location"])
    assert "alpha" in model_ids(company, "ann")

    a = group_id(company, "Dept A")
    with company.live.app.state.session_factory() as session:
        ann_id = get_user(session=session, username="ann").id
    removed = boss.post(f"/admin/groups/{a}/members/{ann_id}/remove")
    assert removed.status_code == 303

    # Same API key, same browser session: the very next requests see the change.
    assert model_ids(company, "ann") == set()
    with pytest.raises(openai.NotFoundError):
        company.api("ann").chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "hi"}]
        )
    # The picker no longer offers it; the conversation's choice shows as gone, like an
    # adapter that was uninstalled.
    picker = ann.page(chat.headers["location"]).text
    assert '<option value="alpha">' not in picker and "alpha (removed)" in picker
    # Her open conversation still names alpha: the next answer is refused, the reason stored.
    conversation = chat.headers["location"]
    sent = ann.post(f"{conversation}/messages", {"content": "Second question"})
    assert sent.status_code in (200, 303)
    done = stream_answer(company, "ann", conversation)
    assert 'data-status="error"' in done
    assert "no adapter named &#39;alpha&#39; is installed" in done or (
        "no adapter named 'alpha' is installed" in done
    )

    with company.live.app.state.session_factory() as session:
        actions = [
            (r.action, json.loads(r.details))
            for r in session.query(AuditRecord).filter(AuditRecord.action.like("group.%"))
        ]
    removed = {"group": "Dept A", "user": "ann"}
    assert any(a == "group.member_removed" and removed.items() <= d.items() for a, d in actions)
    assert any(a == "group.created" and d["group"] == "Dept B" for a, d in actions)


def test_knowledge_bases_follow_the_same_grants(company: Company) -> None:
    boss = company.person("boss", admin=True)
    with company.live.app.state.session_factory() as session:
        kb_a = knowledge_crud.create_knowledge_base(session=session, name="A filings")
        kb_b = knowledge_crud.create_knowledge_base(session=session, name="B contracts")
        ids = (kb_a.id, kb_b.id)
    b = group_id(company, "Dept B")
    saved = boss.post(
        f"/admin/groups/{b}",
        {"name": "Dept B", "adapter": ["beta"], "knowledge_base": [str(ids[1])]},
    )
    assert saved.status_code == 303, saved.text
    with company.live.app.state.session_factory() as session:
        ben = get_user(session=session, username="ben")
        ann = get_user(session=session, username="ann")
        boss_user = get_user(session=session, username="boss")
        assert [k.name for k in knowledge.visible_knowledge_bases(session=session, user=ben)] == [
            "B contracts"
        ]
        assert knowledge.visible_knowledge_bases(session=session, user=ann) == []
        assert knowledge.usable_knowledge_base_ids(
            session=session, user=ben, requested=list(ids)
        ) == [ids[1]]
        assert len(knowledge.visible_knowledge_bases(session=session, user=boss_user)) >= 2


def test_bad_group_forms_say_what_to_fix(company: Company) -> None:
    boss = company.person("boss", admin=True)
    for form, words in [
        ({"name": "  "}, "Group names are"),
        ({"name": "Dept A"}, "exists already"),
        ({"name": "C", "tokens_per_day": "lots"}, "whole number"),
        ({"name": "C", "tokens_per_month": "0"}, "whole number"),
        ({"name": "C", "default_adapter": "beta", "adapter": ["alpha"]}, "must be one the group"),
    ]:
        response = boss.post("/admin/groups", form)
        assert response.status_code == 400, form
        assert words in html.unescape(response.text), (form, response.text[:400])
    missing = boss.post(f"/admin/groups/{group_id(company, 'Dept A')}/members", {"username": "x"})
    assert missing.status_code == 400 and "No user is named" in html.unescape(missing.text)
    assert "C" not in [
        m for m in re.findall(r'data-group="([^"]+)"', boss.page("/admin/groups").text)
    ]
    # Not an admin: 403, and no CSRF token: refused before anything happens.
    assert company.person("ann").post("/admin/groups", {"name": "Mine"}).status_code == 403
