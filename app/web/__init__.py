"""Shared web plumbing: templates, markdown rendering, CSRF. Features import from here."""
