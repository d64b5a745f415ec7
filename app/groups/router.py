"""`/admin/groups`: groups, what they grant, their quotas and members. Thin: parse, call, render.

Every form posts and redirects back (post/redirect/get); a refused form is shown again with
what it said and one sentence on what to fix.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from app.adapters.service import BASE_CHOICE, AdapterService
from app.auth import service as accounts
from app.deps import AdaptersDep, AdminUser, SessionDep
from app.groups import service
from app.groups.schemas import GroupForm
from app.store import identity_crud as store
from app.store import knowledge_crud
from app.store.identity_models import Group
from app.store.models import User
from app.usage.service import QuotaError, parse_tokens
from app.web.templating import render

router = APIRouter(prefix="/admin/groups")

NOTICES = {
    "created": "Group created.",
    "saved": "Group saved; its members see the change on their next request.",
    "deleted": "Group deleted.",
    "member-added": "Member added.",
    "member-removed": "Member removed; they lose the group's grants on their next request.",
}

Many = Annotated[list[str], Form()]


def _page(
    request: Request,
    session: Session,
    adapters: AdapterService,
    *,
    notice: str | None = None,
    error: str | None = None,
    error_group: int | None = None,
    form: GroupForm | None = None,
    code: int = 200,
    new_name: str = "",
) -> Response:
    groups = store.list_groups(session=session)
    mapped = {g.external_name.lower() for g in groups if g.external_name}
    seen = sorted(n for n in store.seen_external_groups(session=session) if n.lower() not in mapped)
    return render(
        request,
        "admin/groups.html",
        {
            "groups": groups,
            "members": {g.id: store.members(session=session, group_id=g.id) for g in groups},
            "grants": {
                g.id: {
                    "adapters": {a.adapter for a in g.adapters},
                    "knowledge_bases": {k.knowledge_base_id for k in g.knowledge_bases},
                }
                for g in groups
            },
            "adapter_names": [BASE_CHOICE, *adapters.registry.names()],
            "knowledge_bases": knowledge_crud.list_knowledge_bases(session=session),
            "unmapped": seen,
            "users": accounts.list_users(session=session),
            "notice": notice,
            "error": error,
            "error_group": error_group,
            "form": form,
            "new_name": new_name,
        },
        status_code=code,
    )


def _group(session: Session, group_id: int) -> Group:
    group = store.get_group(session=session, group_id=group_id)
    if group is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such group.")
    return group


def _form(
    name: str,
    description: str,
    external_name: str,
    default_adapter: str,
    tokens_per_day: str,
    tokens_per_month: str,
    adapter: list[str],
    knowledge_base: list[str],
) -> GroupForm:
    """Raises QuotaError / service.GroupError: a field the admin must fix."""
    try:
        kb_ids = tuple(int(k) for k in knowledge_base if k.strip())
    except ValueError:
        raise service.GroupError(
            "A knowledge base choice is not a number; reload the page."
        ) from None
    return GroupForm(
        name=name,
        description=description,
        external_name=external_name,
        default_adapter=default_adapter or None,
        tokens_per_day=parse_tokens(tokens_per_day, "per day"),
        tokens_per_month=parse_tokens(tokens_per_month, "per month"),
        adapters=tuple(a for a in adapter if a),
        knowledge_base_ids=kb_ids,
    )


def _done(key: str, anchor: str = "") -> RedirectResponse:
    return RedirectResponse(f"/admin/groups?done={key}{anchor}", status_code=303)


@router.get("")
def groups_page(
    request: Request,
    session: SessionDep,
    adapters: AdaptersDep,
    _: AdminUser,
    done: str = "",
    new: str = "",
) -> Response:
    return _page(request, session, adapters, notice=NOTICES.get(done), new_name=new[:100])


@router.post("")
def create_group(
    request: Request,
    session: SessionDep,
    adapters: AdaptersDep,
    admin: AdminUser,
    name: Annotated[str, Form(max_length=200)],
    description: Annotated[str, Form(max_length=4000)] = "",
    external_name: Annotated[str, Form(max_length=255)] = "",
    default_adapter: Annotated[str, Form(max_length=128)] = "",
    tokens_per_day: Annotated[str, Form(max_length=40)] = "",
    tokens_per_month: Annotated[str, Form(max_length=40)] = "",
    adapter: Many = [],  # noqa: B006 - FastAPI copies defaults
    knowledge_base: Many = [],  # noqa: B006
) -> Response:
    raw = GroupForm(name=name, description=description, external_name=external_name)
    try:
        form = _form(
            name,
            description,
            external_name,
            default_adapter,
            tokens_per_day,
            tokens_per_month,
            adapter,
            knowledge_base,
        )
        group = service.save_group(session=session, form=form, actor_id=admin.id)
    except (QuotaError, service.GroupError) as exc:
        return _page(request, session, adapters, error=str(exc), form=raw, code=400)
    return _done("created", f"#group-{group.id}")


@router.post("/{group_id}")
def update_group(
    request: Request,
    session: SessionDep,
    adapters: AdaptersDep,
    admin: AdminUser,
    group_id: int,
    name: Annotated[str, Form(max_length=200)],
    description: Annotated[str, Form(max_length=4000)] = "",
    external_name: Annotated[str, Form(max_length=255)] = "",
    default_adapter: Annotated[str, Form(max_length=128)] = "",
    tokens_per_day: Annotated[str, Form(max_length=40)] = "",
    tokens_per_month: Annotated[str, Form(max_length=40)] = "",
    adapter: Many = [],  # noqa: B006
    knowledge_base: Many = [],  # noqa: B006
) -> Response:
    group = _group(session, group_id)
    try:
        form = _form(
            name,
            description,
            external_name,
            default_adapter,
            tokens_per_day,
            tokens_per_month,
            adapter,
            knowledge_base,
        )
        service.save_group(session=session, form=form, actor_id=admin.id, group=group)
    except (QuotaError, service.GroupError) as exc:
        session.rollback()
        return _page(request, session, adapters, error=str(exc), error_group=group_id, code=400)
    return _done("saved", f"#group-{group_id}")


@router.post("/{group_id}/delete")
def delete_group(session: SessionDep, admin: AdminUser, group_id: int) -> Response:
    service.delete_group(session=session, group=_group(session, group_id), actor_id=admin.id)
    return _done("deleted")


@router.post("/{group_id}/members")
def add_member(
    request: Request,
    session: SessionDep,
    adapters: AdaptersDep,
    admin: AdminUser,
    group_id: int,
    username: Annotated[str, Form(max_length=256)],
) -> Response:
    group = _group(session, group_id)
    user = accounts.get_user(session=session, username=username)
    if user is None:
        return _page(
            request,
            session,
            adapters,
            error=f"No user is named {username.strip()!r}: check the name on /admin/users.",
            error_group=group_id,
            code=400,
        )
    service.add_member(session=session, group=group, user=user, actor_id=admin.id)
    return _done("member-added", f"#group-{group_id}")


@router.post("/{group_id}/members/{user_id}/remove")
def remove_member(session: SessionDep, admin: AdminUser, group_id: int, user_id: int) -> Response:
    group = _group(session, group_id)
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such user.")
    service.remove_member(session=session, group=group, user=user, actor_id=admin.id)
    return _done("member-removed", f"#group-{group_id}")
