"""What the knowledge pages show: documents with their progress, passages as citations."""

from __future__ import annotations

from dataclasses import dataclass

from app.store.knowledge_models import UNFINISHED, KnowledgeDocument

STATE_LABELS = {
    "queued": "queued",
    "parsing": "reading",
    "indexing": "indexing",
    "indexed": "indexed",
    "failed": "failed",
}


@dataclass(frozen=True)
class DocumentRow:
    id: int
    filename: str
    title: str
    format: str
    sha256: str
    size_bytes: int
    state: str
    label: str
    error: str
    notes: list[str]
    pages: int
    pages_done: int
    chunks: int
    busy: bool

    @classmethod
    def of(cls, document: KnowledgeDocument) -> DocumentRow:
        return cls(
            id=document.id,
            filename=document.filename,
            title=document.title,
            format=document.format,
            sha256=document.sha256,
            size_bytes=document.size_bytes,
            state=document.state,
            label=STATE_LABELS.get(document.state, document.state),
            error=document.error or "",
            notes=[line for line in (document.notes or "").splitlines() if line],
            pages=document.pages,
            pages_done=document.pages_done,
            chunks=document.chunks,
            busy=document.state in UNFINISHED,
        )

    @property
    def size(self) -> str:
        if self.size_bytes >= 1 << 20:
            return f"{self.size_bytes / (1 << 20):.1f} MiB"
        return f"{max(1, self.size_bytes // 1024)} KiB"
