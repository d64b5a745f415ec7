"""SQLAlchemy 2 tables. Every conversation row carries its owner's user id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


class MessageStatus(StrEnum):
    PENDING = "pending"
    """Stored, answer not generated yet (the stream starts it)."""
    STREAMING = "streaming"
    COMPLETE = "complete"
    STOPPED = "stopped"
    """Cancelled by the user, a disconnect or shutdown; the partial answer is kept."""
    ERROR = "error"


class StopReason(StrEnum):
    """Who or what ended a `stopped` answer (`Message.stop_reason`)."""

    USER = "user"
    """The user pressed Stop."""
    DISCONNECT = "disconnect"
    """The page was closed or lost its connection."""
    SHUTDOWN = "shutdown"
    """The server shut down while it was being written."""
    RESTART = "restart"
    """Found cut off at start: the server had stopped without finishing it (a crash)."""
    DISABLED = "disabled"
    """Its owner's account was disabled."""


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        # One person per name whatever its case (migration 0004).
        Index("ux_users_username_lower", text("lower(username)"), unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.USER)
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_user_updated", "user_id", "updated_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200), default="New chat")
    adapter: Mapped[str | None] = mapped_column(String(128))
    """Adapter chosen for this conversation; None means the default."""
    temperature: Mapped[float | None]
    """This conversation's sampling temperature; None: the server's default."""
    max_new_tokens: Mapped[int | None]
    """This conversation's answer length limit; None: the server's limit."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation",
        order_by="Message.id",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Message(Base):
    __tablename__ = "messages"
    # Ids are never reused after a delete: stream URLs and audit records point at them.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.COMPLETE)
    stop_reason: Mapped[str | None] = mapped_column(String(16))
    """For a `stopped` answer, a `StopReason`; None for others (and for older rows)."""
    error: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(255))
    adapter_name: Mapped[str | None] = mapped_column(String(128))
    adapter_version: Mapped[int | None]
    adapter_sha256: Mapped[str | None] = mapped_column(String(64))
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class AuthSession(Base):
    """A signed-in browser. The cookie holds a random token; only its SHA-256 is stored."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """sha256 hex of the cookie token, so a leaked database holds no usable session."""
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(255))


class AuditRecord(Base):
    """One append-only audit row; `hash` covers its fields and the previous row's hash."""

    __tablename__ = "audit_records"
    __table_args__ = (Index("ix_audit_action_created", "action", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(64))
    actor_id: Mapped[int | None] = mapped_column(index=True)
    """No foreign key on purpose: audit rows outlive what they mention."""
    actor_name: Mapped[str | None] = mapped_column(String(64), index=True)
    ip: Mapped[str | None] = mapped_column(String(64))
    adapter: Mapped[str | None] = mapped_column(String(128), index=True)
    conversation_id: Mapped[str | None] = mapped_column(String(32))
    details: Mapped[str] = mapped_column(Text, default="{}")
    """Canonical JSON (sorted keys), exactly the bytes the hash covers."""
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's single anchor row: the last id and hash, and where retention cut the start."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    base_id: Mapped[int] = mapped_column(default=0)
    base_hash: Mapped[str] = mapped_column(String(64))


class ApiKey(Base):
    """A bearer key for `/v1`. Only the key's SHA-256 is stored; `prefix` identifies it in lists."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
