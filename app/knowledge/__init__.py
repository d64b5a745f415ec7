"""Company knowledge: documents in, passages out, cited in answers (docs/knowledge.md)."""
