"""Tables of company identity: external sign-ins, groups and their grants, quotas, usage.

A group grants adapters (by registry name; `base` is the bare base model) and knowledge bases,
may name its own default adapter, and may set token quotas for each of its members.
Membership comes from an identity provider's group claim / LDAP groups at every sign-in
(`source` = the provider) or from an administrator (`source` = `manual`).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.store import knowledge_models  # noqa: F401 - the knowledge_bases table grants point at
from app.store.models import Base, utcnow

MANUAL = "manual"
"""`GroupMember.source` of a membership an administrator made (sign-ins leave it alone)."""


class Group(Base):
    __tablename__ = "user_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    external_name: Mapped[str] = mapped_column(String(255), default="", index=True)
    """The identity provider's group (a claim value, an Entra object id, an LDAP cn) whose
    members join this group at sign-in; empty: managed by hand only."""
    default_adapter: Mapped[str | None] = mapped_column(String(128))
    """What "Default" answers with for members (an adapter name or `base`); None: the server's."""
    tokens_per_day: Mapped[int | None]
    """Each member's prompt + answer tokens per UTC day; None: no group limit."""
    tokens_per_month: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    members: Mapped[list[GroupMember]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    adapters: Mapped[list[GroupAdapter]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    knowledge_bases: Mapped[list[GroupKnowledgeBase]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


class GroupMember(Base):
    __tablename__ = "user_group_members"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("user_groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    source: Mapped[str] = mapped_column(String(16), default=MANUAL)
    """`manual`, `oidc` or `ldap`: a sign-in re-syncs only its own provider's memberships."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GroupAdapter(Base):
    __tablename__ = "user_group_adapters"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("user_groups.id", ondelete="CASCADE"), primary_key=True
    )
    adapter: Mapped[str] = mapped_column(String(128), primary_key=True)
    """A registry name (every version of it), or `base` for the bare base model."""


class GroupKnowledgeBase(Base):
    __tablename__ = "user_group_knowledge_bases"

    group_id: Mapped[int] = mapped_column(
        ForeignKey("user_groups.id", ondelete="CASCADE"), primary_key=True
    )
    knowledge_base_id: Mapped[int] = mapped_column(
        ForeignKey("knowledge_bases.id", ondelete="CASCADE"), primary_key=True
    )


class UserIdentity(Base):
    """An account at an identity provider, tied to one Teller user (found by subject, never
    by a name the provider lets people change)."""

    __tablename__ = "user_identities"
    __table_args__ = (UniqueConstraint("provider", "subject", name="uq_user_identities_subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    """`oidc` or `ldap`."""
    subject: Mapped[str] = mapped_column(String(512))
    """`issuer|sub` for OpenID Connect, the entry's DN for LDAP."""
    groups: Mapped[str] = mapped_column(Text, default="[]")
    """The provider's groups at the last sign-in (JSON list), shown on /admin/groups."""
    last_sign_in_at: Mapped[datetime] = mapped_column(default=utcnow)


class UserQuota(Base):
    """One user's own token limits (their groups' limits apply too: the tighter wins)."""

    __tablename__ = "user_quotas"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    tokens_per_day: Mapped[int | None]
    tokens_per_month: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageRecord(Base):
    """One finished answer's tokens as the engine counted them (prompt + answer)."""

    __tablename__ = "usage_records"
    __table_args__ = (
        Index("ix_usage_records_user_day", "user_id", "day"),
        Index("ix_usage_records_day", "day"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    day: Mapped[date]
    """The UTC day the answer ended (quotas and the dashboard count by it)."""
    surface: Mapped[str] = mapped_column(String(16))
    """`chat`, `api` or `compare`."""
    adapter: Mapped[str] = mapped_column(String(128))
    """The adapter name that answered, or `base`."""
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SignInRequest(Base):
    """An OpenID Connect sign-in under way: what the callback must match (state, nonce) and
    the PKCE verifier, keyed by the SHA-256 of a random value in the browser's cookie."""

    __tablename__ = "sign_in_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str] = mapped_column(String(128))
    next_url: Mapped[str] = mapped_column(String(1000), default="/")
    expires_at: Mapped[datetime]
