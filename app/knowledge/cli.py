"""`teller knowledge create|add|list|remove|search`: knowledge bases from a shell (admins).

`add` indexes the files itself and waits (a running server's worker may take some of them;
then it waits for that), so a script knows when the documents are searchable. `search` is
retrieval without a model: document, page, score and passage, or `--json` for measuring.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from app.cli_common import CliError, open_session
from app.config import Settings
from app.knowledge import service
from app.knowledge.embeddings import EmbeddingUnavailable, load_embedder
from app.knowledge.ingest import ingest_next
from app.store import knowledge_crud as store
from app.store.knowledge_models import UNFINISHED, KnowledgeDocument

VIA = "cli"
WAIT_POLL_S = 0.5


def _base(session, name: str):  # noqa: ANN001, ANN202
    try:
        return service.resolve_knowledge_base(session=session, name_or_id=name)
    except service.KnowledgeError as exc:
        raise CliError(str(exc)) from None


def _embedder(settings: Settings):  # noqa: ANN202
    try:
        return load_embedder(settings.embedding_model)
    except EmbeddingUnavailable as exc:
        raise CliError(str(exc)) from None


def knowledge_create(args: argparse.Namespace, settings: Settings) -> str:
    with open_session(settings) as session:
        try:
            base = service.create_knowledge_base(
                session=session,
                name=args.name,
                description=args.description,
                actor_id=None,
                via=VIA,
            )
        except service.KnowledgeError as exc:
            raise CliError(str(exc)) from None
        return f"created knowledge base {base.name!r} (id {base.id})"


def _describe(document: KnowledgeDocument) -> str:
    if document.state == "indexed":
        text = f"indexed, {document.pages} page(s), {document.chunks} passage(s)"
        notes = f"; {document.notes.replace(chr(10), '; ')}" if document.notes else ""
        return text + notes
    if document.state == "failed":
        return f"failed: {document.error}"
    return document.state


def knowledge_add(args: argparse.Namespace, settings: Settings) -> str:
    embedder = _embedder(settings)
    problems = 0
    with open_session(settings) as session:
        base = _base(session, args.name)
        queued: list[tuple[str, int]] = []
        for name in args.files:
            path = Path(name)
            if not path.is_file():
                sys.stderr.write(f"{name}: no such file\n")
                problems += 1
                continue
            result = service.add_upload(
                session=session,
                settings=settings,
                knowledge_base=base,
                filename=path.name,
                data=path.read_bytes(),
                actor_id=None,
                via=VIA,
            )
            if result.outcome == "refused":
                sys.stderr.write(f"{result.message}\n")
                problems += 1
            elif result.outcome == "duplicate":
                sys.stdout.write(f"{result.message}\n")
            elif result.document is not None:
                queued.append((result.filename, result.document.id))
        bind = session.get_bind()
    if args.no_wait:
        for filename, _ in queued:
            sys.stdout.write(f"{filename}: queued\n")
    else:
        from app.store.db import make_session_factory

        factory = make_session_factory(bind.engine)
        for filename, document_id in queued:
            started = time.monotonic()
            ingest_next(
                session_factory=factory,
                settings=settings,
                embedder=embedder,
                document_id=document_id,
            )
            document = _wait(factory, document_id)
            line = f"{filename}: {_describe(document)} ({time.monotonic() - started:.1f} s)"
            if document.state == "failed":
                sys.stderr.write(f"{line}\n")
                problems += 1
            else:
                sys.stdout.write(f"{line}\n")
    if problems:
        raise CliError(f"{problems} of {len(args.files)} file(s) were not added (see above)")
    return f"knowledge base {base.name!r}: {len(queued)} document(s) added"


def _wait(factory, document_id: int) -> KnowledgeDocument:  # noqa: ANN001
    """The document once no one is ingesting it (a server's worker may have claimed it)."""
    while True:
        with factory() as session:
            document = store.get_document(session=session, document_id=document_id)
            if document is None:
                raise CliError(f"document {document_id} was deleted while it was indexed")
            if document.state not in UNFINISHED:
                return document
        time.sleep(WAIT_POLL_S)


def knowledge_list(args: argparse.Namespace, settings: Settings) -> str:
    with open_session(settings) as session:
        if not args.name:
            counts = store.knowledge_base_counts(session=session)
            rows = [
                f"{b.id}\t{b.name}\t{counts.get(b.id, (0, 0))[0]}\t{counts.get(b.id, (0, 0))[1]}"
                for b in store.list_knowledge_bases(session=session)
            ]
            return "\n".join(["id\tname\tdocuments\tpassages", *rows])
        base = _base(session, args.name)
        rows = [
            f"{d.id}\t{d.state}\t{d.pages}\t{d.chunks}\t{d.filename}\t{d.sha256[:12]}"
            + (f"\t{d.error}" if d.error else "")
            for d in store.list_documents(session=session, knowledge_base_id=base.id)
        ]
        return "\n".join(["id\tstate\tpages\tpassages\tfile\tsha256", *rows])


def knowledge_remove(args: argparse.Namespace, settings: Settings) -> str:
    with open_session(settings) as session:
        base = _base(session, args.name)
        document = store.find_document_by_name(
            session=session, knowledge_base_id=base.id, name=args.document
        )
        if document is None:
            raise CliError(
                f"no document {args.document!r} in {base.name!r} (see 'teller knowledge list "
                f"{base.name}')"
            )
        filename = document.filename
        service.delete_document(
            session=session, settings=settings, document=document, actor_id=None, via=VIA
        )
        return f"removed {filename} from {base.name!r}"


def knowledge_search(args: argparse.Namespace, settings: Settings) -> str:
    embedder = _embedder(settings)
    with open_session(settings) as session:
        base = _base(session, args.name)
        started = time.perf_counter()
        passages = service.retrieve(
            session=session,
            knowledge_base_ids=[base.id],
            query=args.query,
            top_k=args.top_k,
            embedder=embedder,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
    if args.json:
        return json.dumps(
            {
                "query": args.query,
                "knowledge_base": base.name,
                "milliseconds": round(elapsed_ms, 2),
                "results": [
                    {
                        "rank": rank,
                        "document": p.document_title,
                        "filename": p.filename,
                        "sha256": p.document_sha256,
                        "page": p.page,
                        "location": p.location,
                        "section": p.section,
                        "score": p.score,
                        "chunk_id": p.chunk_id,
                        "passage": p.text,
                    }
                    for rank, p in enumerate(passages, start=1)
                ],
            },
            ensure_ascii=False,
            indent=2,
        )
    if not passages:
        return f"nothing relevant found in {base.name!r}"
    blocks = []
    for rank, p in enumerate(passages, start=1):
        page = f"page {p.page}" if p.page is not None else (p.location or "-")
        head = f"{rank}. {p.document_title}  {page}  score {p.score:.3f}"
        if p.section:
            head += f"  ({p.section})"
        blocks.append(f"{head}\n{p.text}")
    return "\n\n".join(blocks)


def add_parser(commands: argparse._SubParsersAction, runner: Callable) -> None:  # noqa: ANN001
    """Register `teller knowledge ...` (same calling convention as `app.auth.cli.add_parser`)."""
    knowledge = commands.add_parser("knowledge", help="knowledge bases: create, add, list, search")
    actions = knowledge.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create knowledge base NAME")
    create.add_argument("name")
    create.add_argument("--description", default="")
    create.set_defaults(run=runner(knowledge_create))
    add = actions.add_parser("add", help="add and index FILE... (PDF, DOCX, XLSX, CSV, HTML, ...)")
    add.add_argument("name", help="the knowledge base")
    add.add_argument("files", nargs="+", metavar="FILE")
    add.add_argument("--no-wait", action="store_true", help="queue for the server's worker")
    add.set_defaults(run=runner(knowledge_add))
    listing = actions.add_parser("list", help="knowledge bases, or the documents of NAME")
    listing.add_argument("name", nargs="?", default="")
    listing.set_defaults(run=runner(knowledge_list))
    remove = actions.add_parser("remove", help="remove document DOC (id, file name or title)")
    remove.add_argument("name")
    remove.add_argument("document", metavar="DOC")
    remove.set_defaults(run=runner(knowledge_remove))
    search = actions.add_parser("search", help="the passages that answer QUERY best")
    search.add_argument("name")
    search.add_argument("query")
    search.add_argument("--top-k", type=int, default=5, choices=range(1, 51), metavar="K")
    search.add_argument("--json", action="store_true", help="machine-readable output")
    search.set_defaults(run=runner(knowledge_search))
