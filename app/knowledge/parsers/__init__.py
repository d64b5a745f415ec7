"""One parser per format; `app.knowledge.parsers.registry.parse` picks the right one."""
