"""Migration 0005 on both databases: up, down to 0004 and up again, index included."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from app.store.db import alembic_config

TABLES = {
    "knowledge_bases",
    "knowledge_documents",
    "knowledge_chunks",
    "knowledge_embeddings",
    "conversation_knowledge_bases",
    "answer_sources",
}


def test_down_and_up_again(factory, settings, make_base) -> None:  # noqa: ANN001
    from tests.knowledge.documents import make_pdf, statement_page
    from tests.knowledge.steps import add_and_index, search

    engine = factory.kw["bind"]
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
    assert not TABLES & set(inspect(engine).get_table_names())
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert TABLES <= set(inspect(engine).get_table_names())
    base = make_base(factory)
    add_and_index(factory, settings, base, "acme.pdf", make_pdf([statement_page("Acme", 2022)]))
    assert search(factory, base, "total revenue")
