"""Knowledge migrations on both databases: 0005 down to 0004 and up again, index included;
0009 drops the unread `knowledge_bases.visible_to` and keeps every document and passage."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, text

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


def _columns(engine, table: str) -> set[str]:  # noqa: ANN001
    return {column["name"] for column in inspect(engine).get_columns(table)}


def _migrate(engine, config, step, revision: str) -> None:  # noqa: ANN001
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        step(config, revision)


def test_0009_drops_visible_to_and_keeps_every_document(factory, settings, make_base) -> None:  # noqa: ANN001
    from tests.knowledge.documents import make_pdf, statement_page
    from tests.knowledge.steps import add_and_index, search

    engine = factory.kw["bind"]
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    base = make_base(factory)
    add_and_index(factory, settings, base, "acme.pdf", make_pdf([statement_page("Acme", 2022)]))
    assert "visible_to" not in _columns(engine, "knowledge_bases")

    _migrate(engine, config, command.downgrade, "0008")
    assert "visible_to" in _columns(engine, "knowledge_bases")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT name, visible_to FROM knowledge_bases")).all()
    assert [tuple(row) for row in rows] == [("Filings", "everyone")]

    _migrate(engine, config, command.upgrade, "head")
    assert "visible_to" not in _columns(engine, "knowledge_bases")
    with engine.connect() as connection:
        documents = connection.execute(text("SELECT count(*) FROM knowledge_documents")).scalar()
        passages = connection.execute(text("SELECT count(*) FROM knowledge_chunks")).scalar()
    assert documents == 1 and passages, "the column went, the documents and passages stayed"
    assert search(factory, base, "total revenue")
