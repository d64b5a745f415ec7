"""A conversation as a download: Markdown to read or paste, JSON to keep or process.

Both carry what the page shows (questions, answers as written, how each answer ended, the
adapter version that wrote it, its sources) and nothing of anyone else's.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from app.chat.knowledge import Citation
from app.store.models import Conversation, Message, MessageStatus

ENDINGS = {
    "user": "Stopped — partial answer.",
    "disconnect": "Cut off: the page was closed or lost its connection — partial answer.",
    "shutdown": "Cut off by a server shutdown — partial answer.",
    "restart": "Cut off by a server restart — partial answer.",
    "disabled": "Stopped: the account was disabled — partial answer.",
}
"""How a stopped answer ended, by `StopReason`, in the words the page uses."""


def ending(message: Message) -> str | None:
    """What the page says under an answer that did not complete (None: it completed)."""
    if message.status == MessageStatus.STOPPED:
        return ENDINGS.get(message.stop_reason or "", "Stopped — partial answer.")
    if message.status == MessageStatus.ERROR:
        return f"The answer failed: {message.error or 'unknown error'}"
    return None


def file_name(conversation: Conversation, suffix: str) -> str:
    """A safe download name from the title (ASCII letters, digits and dashes)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", conversation.title).strip("-").lower()[:60]
    return f"teller-{stem or 'conversation'}-{conversation.id[:8]}.{suffix}"


def _stamp(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _adapter(message: Message) -> str | None:
    if not message.adapter_name:
        return None
    return f"{message.adapter_name} v{message.adapter_version}"


def as_markdown(
    conversation: Conversation, citations: dict[int, list[Citation]], exported_at: datetime
) -> str:
    lines = [
        f"# {conversation.title}",
        "",
        f"_Exported from Teller on {_stamp(exported_at)}. Answers may be wrong: check figures "
        "before you rely on them._",
        "",
    ]
    for message in conversation.messages:
        if message.role == "user":
            lines += [f"## You · {_stamp(message.created_at)}", "", message.content, ""]
            continue
        if message.status in (MessageStatus.PENDING, MessageStatus.STREAMING):
            continue
        who = "## Teller"
        if _adapter(message):
            who += f" ({_adapter(message)})"
        lines += [f"{who} · {_stamp(message.finished_at or message.created_at)}", ""]
        lines += [message.content, ""] if message.content else []
        note = ending(message)
        if note:
            lines += [f"> {note}", ""]
        sources = citations.get(message.id, [])
        if sources:
            lines += ["Sources:", ""]
            for source in sources:
                where = f", {source.location}" if source.location else ""
                lines.append(f"{source.number}. {source.document}{where}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _message_record(message: Message, sources: list[Citation]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "created_at": message.created_at.isoformat(),
    }
    if message.role == "assistant":
        record |= {
            "status": message.status,
            "stop_reason": message.stop_reason,
            "error": message.error,
            "finished_at": message.finished_at.isoformat() if message.finished_at else None,
            "model": message.model,
            "adapter": None
            if not message.adapter_name
            else {
                "name": message.adapter_name,
                "version": message.adapter_version,
                "sha256": message.adapter_sha256,
            },
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
            "sources": [
                {
                    "number": s.number,
                    "document": s.document,
                    "document_sha256": s.document_sha256,
                    "page": s.page,
                    "location": s.location,
                    "quote": s.quote,
                }
                for s in sources
            ],
        }
    return record


def as_json(
    conversation: Conversation, citations: dict[int, list[Citation]], exported_at: datetime
) -> str:
    document = {
        "format": "teller.conversation/1",
        "exported_at": exported_at.isoformat(),
        "id": conversation.id,
        "title": conversation.title,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "adapter": conversation.adapter,
        "settings": {
            "temperature": conversation.temperature,
            "max_new_tokens": conversation.max_new_tokens,
        },
        "messages": [
            _message_record(m, citations.get(m.id, []))
            for m in conversation.messages
            if m.status not in (MessageStatus.PENDING, MessageStatus.STREAMING)
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"
