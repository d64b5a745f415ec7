"""The batched forward every family runs: sequence slots over one KV cache, and its three steps.

transformers runs one request's tensors through cache objects, mask builders and PEFT's
per-layer dispatch; on a GPU that is thousands of small launches per token and the card idles
most of the time. `SlotBatch` keeps the maths and drops the machinery, the same way for every
architecture family:

- the KV cache is one preallocated tensor per layer, one slot per running sequence; batch row
  `i` always lives in slot `i`, so decode attends over a view of the cache, never a copy;
- `prefill` runs one new sequence's prompt into its slot, `prefill_many` several right-padded
  prompts in one forward, `decode` one token for each of the first B slots at their own
  positions, with fixed shapes a CUDA graph can capture;
- the rotary tables come from the model's own rotary module once per cache length;
- base projections run as loaded (bitsandbytes NF4 `Linear4bit`, or plain linear layers on
  CPU) or through the faster kernel a linear override gives; LoRA factors come from a
  `LoraBank`, so each row may use its own adapter (`Projections`).

What differs between families (attention shape, MLP, norms, how rotation meets the cache)
is a `Blocks` object: `falcon.FalconBlocks`, `llama.LlamaBlocks`. A step hands the family's
attention a `PromptStep` or `DecodeStep`, which holds the step's rows, rotary slices and
masks and writes and reads the cache the step's own way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, Protocol, TypedDict

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.models.attention import (
    KVCache,
    decode_visibility,
    prefill_attention,
    prefill_visibility,
)
from app.engine.models.lora_bank import LoraBank, read_peft_factors
from app.engine.models.projections import BoundProjections, LinearOverride, LoraRows, Projections

Attend = Callable[..., torch.Tensor]
"""One step's attention for layer `index`, as the family's block calls it (`attend(index,
...projected heads)`): rotation, cache write and attention, the step's own way."""


@dataclass(frozen=True)
class PromptStep:
    """A prefill's prompts: where their keys and values go and how they attend.

    One prompt (`prefill`): `slots` is its slot and attention is causal. Several
    (`prefill_many`): `slots` is (N,), prompts are right-padded to `length` and `visible`
    hides each row's padding keys, whose cache entries decode overwrites before anything
    reads them.
    """

    cache: KVCache
    slots: int | torch.Tensor
    length: int
    cos: torch.Tensor  # (S, D)
    sin: torch.Tensor  # (S, D)
    visible: torch.Tensor | None = None  # (N, 1, S, S)

    def store(self, index: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write the prompts' rotated keys and values (N, KV, S, D) into layer `index`."""
        if isinstance(self.slots, int):
            self.cache.k[index, self.slots, :, : self.length] = k[0]
            self.cache.v[index, self.slots, :, : self.length] = v[0]
        else:
            self.cache.k[index, self.slots, :, : self.length] = k
            self.cache.v[index, self.slots, :, : self.length] = v

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **options: Any
    ) -> torch.Tensor:
        """SDPA of the prompts over their own keys: causal, and blind to padding for several."""
        if self.visible is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.length > 1, **options)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.visible, **options)


@dataclass(frozen=True)
class DecodeStep:
    """One token for each of rows 0..B-1 (slot = row), each at its own position."""

    cache: KVCache
    rows: torch.Tensor  # (B,) 0..B-1
    positions: torch.Tensor  # (B,)
    context: int
    """How much of the cache to attend over (a graph bucket's size, or the longest row)."""
    cos: torch.Tensor  # (B, 1, 1, D) at each row's position
    sin: torch.Tensor
    table: tuple[torch.Tensor, torch.Tensor]
    """The whole (T, D) cos and sin tables, for kernels that index them by position."""
    visible: torch.Tensor  # (B, 1, 1, T)

    @property
    def batch(self) -> int:
        return self.rows.shape[0]

    def store(self, index: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write each row's rotated key and value (B, KV, 1, D) at its position in layer
        `index`."""
        self.cache.k[index, self.rows, :, self.positions] = k[:, :, 0]
        self.cache.v[index, self.rows, :, self.positions] = v[:, :, 0]

    def cached(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of layer `index`'s keys and values the rows attend over, (B, KV, T, D)."""
        batch, context = self.batch, self.context
        return self.cache.k[index, :batch, :, :context], self.cache.v[index, :batch, :, :context]


class Blocks(Protocol):
    """One family's side of a batched forward: where its weights sit and how a block runs."""

    embed: torch.Tensor
    """(V, C) input embedding; its device and dtype are the forward's."""
    rotary_emb: torch.nn.Module
    """The model's rotary module: (x, positions (1, T)) → cos, sin (1, T, D)."""
    n_kv: int
    head_dim: int
    lm_head: Callable[[torch.Tensor], torch.Tensor]
    """The output projection `logits` applies: the model's own, or a linear override's."""
    groups: tuple[tuple[str, ...], ...]
    """Projections of one input that `block` asks for together (`project_group`)."""

    def modules(self) -> list[dict[str, torch.nn.Module]]:
        """Per layer, projection name → the module in the model (PEFT-wrapped or not)."""
        ...

    def block(
        self, index: int, x: torch.Tensor, attend: Attend, proj: BoundProjections
    ) -> torch.Tensor:
        """Decoder block `index` on (B, S, C), its projections through `proj`."""
        ...

    def prompt_attention(self, step: PromptStep) -> Attend: ...

    def decode_attention(self, step: DecodeStep, x: torch.Tensor) -> Attend:
        """The decode step's attention; `x` (B, 1, C), the embedded tokens, says where it
        runs (a CUDA kernel may rotate straight into the cache)."""
        ...

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and head on (N, C): float logits (N, V)."""
        ...


class Sizes(TypedDict):
    """`SlotBatch`'s keyword arguments, for the family classes that build one."""

    slots: int
    max_tokens: int
    linear_override: NotRequired[LinearOverride | None]


class SlotBatch:
    """The model's weights, a KV cache with `slots` sequence slots, and adapter factors.

    Args:
        blocks: the family's side (`FalconBlocks`, `LlamaBlocks`); weights are shared, not
            copied.
        slots: most sequences running at once.
        max_tokens: longest sequence (prompt + answer) a slot holds.
        linear_override: replaces a base projection's forward (a faster NF4 kernel); gets the
            module and returns the callable to use, or None to keep the module's own.
    """

    def __init__(
        self,
        blocks: Blocks,
        *,
        slots: int,
        max_tokens: int,
        linear_override: LinearOverride | None = None,
    ) -> None:
        self.blocks = blocks
        self.embed = blocks.embed
        self.device, self.dtype = self.embed.device, self.embed.dtype
        self.slots = slots
        self.max_tokens = max_tokens
        modules = blocks.modules()
        self.n_layers = len(modules)
        self.lora = LoraBank(self.dtype, self.device)
        self.projections = Projections(modules, self.lora, linear_override, blocks.groups)
        head = blocks.lm_head
        if linear_override is not None and isinstance(head, torch.nn.Module):
            faster_head = linear_override(head)
            if faster_head is not None:  # `logits` calls it; the model keeps its own head
                blocks.lm_head = faster_head
        self.cache = KVCache(
            layers=self.n_layers, slots=slots, heads=blocks.n_kv, max_tokens=max_tokens,
            head_dim=blocks.head_dim, dtype=self.dtype, device=self.device,
        )  # fmt: skip
        self.k_cache, self.v_cache = self.cache.k, self.cache.v
        positions = torch.arange(max_tokens, device=self.device).unsqueeze(0)
        cos, sin = blocks.rotary_emb(self.embed[:1].unsqueeze(0), positions)  # (1, T, D)
        self.cos, self.sin = cos[0], sin[0]  # (T, D)
        self.set_adapters(None)

    def set_adapters(self, model: Any) -> None:
        """Re-read every loaded adapter's factors (after a load or unload).

        Args:
            model: the PEFT model that loaded or unloaded them; its modules are the blocks'
                own, so the factors are read from those.
        """
        self.lora.replace(read_peft_factors(self.blocks.modules()))

    def _layers(
        self,
        x: torch.Tensor,
        attend: Attend,
        adapters: Sequence[str | None] | None,
        mask: LoraRows,
    ) -> torch.Tensor:
        """Every decoder block in turn on (B, S, C)."""
        block, proj = self.blocks.block, self.projections.bind(adapters, mask)
        for index in range(self.n_layers):
            x = block(index, x, attend, proj)
        return x

    def _prompt_layers(
        self,
        x: torch.Tensor,
        step: PromptStep,
        adapters: Sequence[str | None] | None,
        mask: LoraRows,
    ) -> torch.Tensor:
        attend = self.blocks.prompt_attention(step)
        with prefill_attention(self.device):
            return self._layers(x, attend, adapters, mask)

    # ---- public steps -------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, slot: int, token_ids: Sequence[int], adapter: str | None) -> torch.Tensor:
        """Run a new sequence's prompt into `slot`; return logits (V,) for the next token."""
        length = len(token_ids)
        if not 0 < length <= self.max_tokens:
            raise ValueError(f"a prompt of {length} tokens does not fit ({self.max_tokens})")
        ids = torch.tensor([list(token_ids)], device=self.device)
        x = F.embedding(ids, self.embed)  # (1, S, C)
        step = PromptStep(self.cache, slot, length, self.cos[:length], self.sin[:length])
        adapters = [adapter] if adapter is not None else None
        x = self._prompt_layers(x, step, adapters, None)
        return self.blocks.logits(x[:, -1])[0]

    @torch.inference_mode()
    def prefill_many(
        self,
        slots: Sequence[int],
        prompts: Sequence[Sequence[int]],
        adapters: Sequence[str | None],
        *,
        stacked_lora: bool | None = None,
    ) -> torch.Tensor:
        """Several new sequences' prompts in one forward; logits (N, V), one row each.

        Prompts are right-padded to the longest; a key mask hides each row's padding (see
        `PromptStep`). One forward reads (and, under bitsandbytes, dequantizes) every weight
        once for all N prompts, where N single prefills would each pay for it.

        Args:
            stacked_lora: add mixed adapters through the stacked layout with a row mask (one
                pair of GEMMs per projection) instead of PEFT's way per adapter (a gather,
                two GEMMs and a scatter each). None: on CUDA, where a prefill is bound by
                launching its kernels and that saves ~140 launches a layer with four
                adapters; on CPU the per-adapter way keeps results equal to PEFT's.
        """
        lengths = [len(p) for p in prompts]
        longest = max(lengths)
        if min(lengths) < 1 or longest > self.max_tokens:
            raise ValueError(f"prompts must hold 1..{self.max_tokens} tokens")
        padded = [list(p) + [0] * (longest - len(p)) for p in prompts]
        ids = torch.tensor(padded, device=self.device)  # (N, S)
        lengths_t = torch.tensor(lengths, device=self.device)
        slots_t = torch.tensor(list(slots), device=self.device)
        x = F.embedding(ids, self.embed)  # (N, S, C)
        visible = prefill_visibility(lengths_t, longest)  # (N, 1, S, S)
        step = PromptStep(
            self.cache, slots_t, longest, self.cos[:longest], self.sin[:longest], visible
        )
        if stacked_lora is None:
            stacked_lora = self.device.type == "cuda" and len(set(adapters)) > 1
        per_row: list[str | None] | None = list(adapters)
        mask: torch.Tensor | None = None
        if stacked_lora and any(a is not None for a in adapters):
            per_row, mask = None, self.lora.row_mask(adapters, len(prompts)).unsqueeze(1)
        x = self._prompt_layers(x, step, per_row, mask)
        last = x[torch.arange(len(prompts), device=self.device), lengths_t - 1]  # (N, C)
        return self.blocks.logits(last)

    @torch.inference_mode()
    def decode(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        context: int,
        *,
        adapters: Sequence[str | None] | None = None,
        lora_mask: torch.Tensor | None = None,
        lora_slot: int | None = None,
    ) -> torch.Tensor:
        """One token for each of slots 0..B-1; logits (B, V).

        Args:
            tokens: (B,) the token each row just chose.
            positions: (B,) where that token goes in its row's sequence.
            context: how much of the cache to attend over (≥ every position + 1); a graph
                bucket's fixed size, or the longest row when run eagerly.
            adapters: per-row adapter names, added the PEFT way (eager steps).
            lora_mask: (B, S*R) from `LoraBank.row_mask`, for fixed-shape (graphed) steps.
            lora_slot: every row uses this one adapter (its slot in the bank): fixed shapes
                that read only its factors.
        """
        batch = tokens.shape[0]
        rows = torch.arange(batch, device=self.device)
        x = F.embedding(tokens, self.embed).unsqueeze(1)  # (B, 1, C)
        cos = self.cos[positions].view(batch, 1, 1, -1)  # (B, 1, 1, D)
        sin = self.sin[positions].view(batch, 1, 1, -1)
        visible = decode_visibility(positions, context)  # (B, 1, 1, T)
        step = DecodeStep(
            self.cache, rows, positions, context, cos, sin, (self.cos, self.sin), visible
        )
        attend = self.blocks.decode_attention(step, x)
        if self.device.type == "cpu" and adapters is not None and not any(adapters):
            adapters = None  # no row on an adapter: nothing to add per projection
        lora: LoraRows = lora_slot
        if lora_mask is not None:
            lora = lora_mask.unsqueeze(1)  # (B, 1, S*R) against (B, 1, ·) activations
        x = self._layers(x, attend, adapters, lora)
        return self.blocks.logits(x[:, 0])

    def move(self, source: int, target: int) -> None:
        """Copy a sequence's cache from slot `source` to `target` (keeps rows contiguous)."""
        self.cache.move(source, target)


def block_projections(
    blocks: Sequence[Any], attention: str, names: Sequence[str], attention_names: Sequence[str]
) -> list[dict[str, torch.nn.Module]]:
    """Per decoder block, projection name → module: those in `attention_names` from the
    block's `attention` submodule, the others from its `mlp`."""
    return [
        {
            name: getattr(getattr(block, attention) if name in attention_names else block.mlp, name)
            for name in names
        }
        for block in blocks
    ]
