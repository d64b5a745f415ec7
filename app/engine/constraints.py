"""Constrained decoding: a grammar that every generated token must keep the text inside.

A request may carry a `Grammar` (plain data: a Lark grammar in llguidance's dialect, which
embeds JSON schemas with `%json {...}`). The engine compiles it against its tokenizer into a
`TokenMask` when the request is prepared, off the worker thread; the decode loop then asks the
mask for the tokens allowed next, sets every other logit to -inf before sampling (greedy and
sampled alike), and tells it which token was chosen. Once the grammar is complete the only
token allowed is end-of-sequence, so the answer ends exactly where the JSON does.

llguidance (Microsoft's Rust library behind Guidance, also used by vLLM and llama.cpp) does
the matching: it computes a mask over a 49k vocabulary in well under a millisecond, so a
constrained answer costs about what a free one does. It is imported here only: the rest of
the engine asks this module.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class Grammar:
    """What a constrained answer must match: a Lark grammar (llguidance's dialect)."""

    lark: str

    @classmethod
    def json_schema(cls, schema: dict[str, Any]) -> Grammar:
        """Any JSON value valid against `schema` (`{"type": "object"}`: any object)."""
        return cls(f"start: %json {json.dumps(schema)}")


class GrammarError(ValueError):
    """The grammar (or a schema in it) cannot be compiled; the message says why."""


class TokenMask:
    """One request's matcher: which tokens may come next, and the tokens chosen so far."""

    def __init__(self, matcher: Any, vocab_size: int, eos: int) -> None:
        import llguidance.torch as llt

        self._matcher = matcher
        self._llt = llt
        self._bitmask = llt.allocate_token_bitmask(1, vocab_size)  # (1, ceil(V / 32)) int32
        self._vocab = vocab_size
        self._eos = eos

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (V',) with every token the grammar forbids next at -inf (a new tensor).

        V' may be larger than the tokenizer's vocabulary (padded embedding rows): those rows
        are never text, so they are forbidden too.
        """
        if self._matcher.is_stopped() or self._matcher.is_error():
            masked = torch.full_like(logits, float("-inf"))
            masked[self._eos] = 0.0
            return masked
        self._llt.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        packed = self._bitmask[0].numpy().view(np.uint8)  # little-endian int32 words
        allowed = np.unpackbits(packed, bitorder="little")[: self._vocab].astype(bool)  # (V,)
        forbid = torch.ones(logits.shape[0], dtype=torch.bool)
        forbid[: self._vocab] = torch.from_numpy(~allowed)
        return logits.masked_fill(forbid.to(logits.device), float("-inf"))

    def accept(self, token: int) -> None:
        """Advance past the chosen token (end-of-sequence included: it ends the matcher)."""
        if not self._matcher.is_stopped():
            self._matcher.consume_token(token)

    @property
    def error(self) -> str:
        return str(self._matcher.get_error() or "") if self._matcher.is_error() else ""


class GrammarCompiler:
    """Compiles grammars for one tokenizer (its llguidance view is built once, lazily)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ll: Any = None
        self._lock = threading.Lock()

    def _ll_tokenizer(self) -> Any:
        with self._lock:
            if self._ll is None:
                import llguidance.hf

                self._ll = llguidance.hf.from_tokenizer(self._tokenizer)
            return self._ll

    def compile(self, grammar: Grammar) -> TokenMask:
        """A fresh matcher for one request.

        Raises:
            GrammarError: the grammar or a schema in it is invalid.
        """
        import llguidance

        ll = self._ll_tokenizer()
        text = llguidance.LLMatcher.grammar_from_lark(grammar.lark)
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text, ll)
        if failed:
            raise GrammarError(f"the output format cannot be enforced: {'; '.join(messages)}")
        matcher = llguidance.LLMatcher(ll, text)
        if matcher.is_error():
            raise GrammarError(f"the output format cannot be enforced: {matcher.get_error()}")
        return TokenMask(matcher, ll.vocab_size, ll.eos_token)


def check_grammar(grammar: Grammar) -> None:
    """Raises GrammarError for a grammar that cannot compile (checked without a tokenizer,
    so a web request can be refused with 400 before it takes a slot)."""
    import llguidance

    try:
        text = llguidance.LLMatcher.grammar_from_lark(grammar.lark)
    except Exception as exc:  # noqa: BLE001 - the library's own message says what is wrong
        raise GrammarError(f"the output format cannot be enforced: {exc}") from None
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text)
    if failed:
        raise GrammarError(f"the output format cannot be enforced: {'; '.join(messages)}")
