"""The prose of the finance sample dataset, loaded from finance_concepts.yaml.

The texts live in a data file, apart from the generator's code, so a reviewer can read and
correct the wording as prose. In each concept's explanation wrapped lines are joined with spaces
and blank lines start a new paragraph; templates are (instruction, input) str.format patterns.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

PROSE_FILE = Path(__file__).with_name("finance_concepts.yaml")
PHRASINGS_PER_CONCEPT = 5  # one phrasing of each concept is held out, the others train

Record = dict[str, object]

Template = tuple[str, str]
"""(instruction, input): str.format patterns filled from a concept or a worked calculation."""


def unwrap(text: str) -> str:
    """Rejoin wrapped lines: single newlines become spaces, blank lines stay paragraph breaks."""
    return "\n\n".join(" ".join(p.split()) for p in text.strip().split("\n\n"))


def templates(items: list[dict[str, str]]) -> tuple[Template, ...]:
    """`{instruction, input}` mappings as (instruction, input) pairs; a missing input is ''."""
    return tuple((item["instruction"], item.get("input", "")) for item in items)


_PROSE: dict[str, Any] = yaml.safe_load(PROSE_FILE.read_text(encoding="utf-8"))

CONCEPTS: tuple[tuple[str, str], ...] = tuple(
    (concept["term"], unwrap(concept["explanation"])) for concept in _PROSE["concepts"]
)
"""Every concept as (term, explanation), in file order; the generator relies on this order."""

CONCEPT_TEMPLATES: tuple[Template, ...] = templates(_PROSE["concept_templates"])
"""Paraphrased requests; each concept gets several, one of which is held out for evaluation."""

CALCULATION_TEMPLATES: dict[str, tuple[Template, ...]] = {
    kind: templates(items) for kind, items in _PROSE["calculation_templates"].items()
}
"""Several phrasings per calculation kind; the fields come from each example's params."""

RATIO_REMARKS: dict[str, str] = _PROSE["ratio_remarks"]
"""The closing line of each ratio example; `{:.2f}` is filled with the ratio."""

GROWTH_SUBJECTS: tuple[str, ...] = tuple(_PROSE["growth_subjects"])
"""What a growth-rate (CAGR) question is about."""


# --- concept records --------------------------------------------------------------------------


def render(template: Template, fields: dict[str, str]) -> tuple[str, str]:
    """Fill an (instruction, input) template."""
    return template[0].format(**fields), template[1].format(**fields)


def concept_records(rng: random.Random) -> tuple[list[Record], list[Record]]:
    """Several phrasings per concept: the first goes to the held-out split, the rest train.

    Holding out a phrasing (not a whole concept) tests whether the model answers a question it
    was not trained on verbatim, which is what the held-out loss is meant to show.
    """
    train: list[Record] = []
    held_out: list[Record] = []
    for term, explanation in CONCEPTS:
        bare = term.removeprefix("the ").removeprefix("an ").removeprefix("a ")
        fields = {"term": term, "bare": bare[0].upper() + bare[1:]}
        chosen = rng.sample(CONCEPT_TEMPLATES, PHRASINGS_PER_CONCEPT)
        for index, template in enumerate(chosen):
            instruction, input_text = render(template, fields)
            record: Record = {
                "instruction": instruction,
                "input": input_text,
                "output": explanation,
            }
            (held_out if index == 0 else train).append(record)
    return train, held_out
