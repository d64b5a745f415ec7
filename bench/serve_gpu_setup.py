"""Setup and baseline for `serve_gpu.py`: the random-weight Falcon-7B or Llama-3.1-8B in NF4,
its LoRA adapters, the plain transformers + PEFT measurements, and the bandwidth floor.

Not run on its own: part of `bench/serve_gpu.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from app.contract import AdapterManifest, PromptFormat, sha256_file
from app.engine.loader import LoadedModel
from app.engine.models.falcon import PROJECTIONS as FALCON_TARGETS
from app.engine.models.families import batched_forward
from app.engine.models.llama import PROJECTIONS as LLAMA_TARGETS

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / "models" / "SmolLM2-135M-Instruct"
ADAPTERS = 4
TEXT = (
    "Explain how a company's free cash flow differs from its net income, and walk through "
    "the adjustments for depreciation, working capital and capital expenditure. "
)


MODELS = ("falcon", "llama")
"""`falcon`: Falcon-7B; `llama`: Llama-3.1-8B (grouped-query attention, llama3 RoPE scaling,
untied 128K-token embeddings), the architecture of Llama 3.x 8B models."""


def llama_31_8b_config() -> Any:
    """meta-llama/Llama-3.1-8B's architecture (config.json of the hub repo, written out)."""
    from transformers import LlamaConfig

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}  # fmt: skip
    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_act="silu",
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_parameters=rope,
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128001,
    )  # fmt: skip


def model_config(model: str, smoke: bool) -> Any:
    """The benchmarked architecture, or its block layout shrunk to 2 layers for `--smoke`."""
    if model == "falcon":
        return falcon_config(smoke)
    config = llama_31_8b_config()
    if smoke:
        config.update(
            {"vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 16}
        )  # fmt: skip
    return config


def lora_targets(model: str) -> tuple[str, ...]:
    return FALCON_TARGETS if model == "falcon" else LLAMA_TARGETS


def falcon_config(smoke: bool) -> Any:
    """Falcon-7B's architecture (the training bench's copy of the hub config), or the same
    block layout shrunk to 2 layers of width 64 for `--smoke`."""
    from bench.train_gpu import falcon_7b_config

    config = falcon_7b_config()
    if smoke:
        config.update(
            {"vocab_size": 49152, "hidden_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4}
        )  # fmt: skip
    return config


def quantize_in_place(model: Any) -> int:
    """Replace every block projection (every linear but the lm_head, as `load_base_model`
    quantizes a checkpoint) with a bitsandbytes NF4 Linear4bit (double quant)."""
    import bitsandbytes as bnb

    count = 0
    owners = [m for n, m in model.named_modules() if n and not n.endswith("lm_head")]
    for owner in owners:
        for name, old in list(owner.named_children()):
            if not isinstance(old, torch.nn.Linear) or name == "lm_head":
                continue
            new = bnb.nn.Linear4bit(
                old.in_features,
                old.out_features,
                bias=old.bias is not None,
                compute_dtype=torch.bfloat16,
                compress_statistics=True,
                quant_type="nf4",
                device="meta",
            )
            new.weight = bnb.nn.Params4bit(
                old.weight.data,
                requires_grad=False,
                compress_statistics=True,
                quant_type="nf4",
            ).cuda()
            if old.bias is not None:
                new.bias = torch.nn.Parameter(old.bias.data, requires_grad=False)
            setattr(owner, name, new)
            count += 1
    torch.cuda.empty_cache()
    return count


def build_model(smoke: bool, work: Path, model: str = "falcon") -> tuple[LoadedModel, Path]:
    """The random-weight model (NF4 on CUDA), and a folder with its config for the registry."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = model_config(model, smoke)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    folder = work / f"{model}-{'tiny' if smoke else 'full'}-random"
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    if smoke:
        tiny = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
        return LoadedModel(
            tiny, tokenizer, str(folder), torch.device("cpu"), torch.float32, "none"
        ), folder
    with torch.device("cuda"):
        built = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    count = quantize_in_place(built)
    loaded = LoadedModel(
        built,
        tokenizer,
        str(folder),
        torch.device("cuda"),
        torch.bfloat16,
        "nf4",
        linear_4bit=count,
    )
    return loaded, folder


def make_adapters(
    loaded: LoadedModel,
    folder: Path,
    work: Path,
    rank: int,
    targets: tuple[str, ...] = FALCON_TARGETS,
    count: int = ADAPTERS,
) -> list[Path]:
    """`count` random non-zero LoRA packages (bf16 files), each with a Teller manifest."""
    from peft import LoraConfig, get_peft_model

    paths = []
    model = loaded.model
    for index in range(count):
        torch.manual_seed(100 + index)
        config = LoraConfig(
            r=rank, lora_alpha=16, target_modules=list(targets), init_lora_weights=False
        )
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.data = (param.data * (0.1 if "lora_B" in name else 1.0)).to(loaded.dtype)
        out = work / f"adapter-{index}"
        peft_model.save_pretrained(out, safe_serialization=True)
        AdapterManifest(
            name=f"bench{index}",
            base_model=str(folder),
            prompt_format=PromptFormat.ALPACA,
            sha256=sha256_file(out / "adapter_model.safetensors"),
        ).write(out)
        model = peft_model.unload()
        paths.append(out)
    loaded.model = model
    return paths


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def prompt_ids(tokenizer: Any, length: int, shift: int = 0) -> list[int]:
    ids: list[int] = []
    while len(ids) < length + shift:
        ids += tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    return ids[shift : shift + length]


# ---- baseline: transformers generate + PEFT ----------------------------------------------


def greedy_generate(model: Any, ids: torch.Tensor, new: int) -> torch.Tensor:
    """transformers `generate`, greedy, exactly `new` tokens (EOS cannot end it early)."""
    return model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
    )


def timed_generate(model: Any, ids: torch.Tensor, new: int) -> float:
    sync()
    start = time.perf_counter()
    greedy_generate(model, ids, new)
    sync()
    return time.perf_counter() - start


@contextlib.contextmanager
def peft_adapter(loaded: LoadedModel, adapter: Path) -> Iterator[Any]:
    """The base under PEFT with `adapter` as `a0`, unloaded again afterwards (so the next
    step, or the engine, gets the bare base model back)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(loaded.model, str(adapter), adapter_name="a0").eval()
    try:
        yield model
    finally:
        loaded.model = model.unload()


def run_baseline(loaded: LoadedModel, adapter: Path, args: argparse.Namespace) -> dict:
    with peft_adapter(loaded, adapter) as model:
        return _baseline(model, loaded, args)


def _baseline(model: Any, loaded: LoadedModel, args: argparse.Namespace) -> dict:
    device, tok = loaded.device, loaded.tokenizer
    short = torch.tensor([prompt_ids(tok, 16)], device=device)
    long = torch.tensor([prompt_ids(tok, 512)], device=device)
    n = args.baseline_tokens
    timed_generate(model, short, 4)  # warm-up
    out: dict[str, Any] = {"recipe": "transformers generate, unmerged PEFT LoRA, NF4 base"}
    with torch.inference_mode():
        out["decode_tok_s"] = decode_rate(model, short, n)
        out["ttft_512_ms"] = 1000 * statistics.median(
            timed_generate(model, long, 1) for _ in range(3)
        )
        batch = torch.tensor([prompt_ids(tok, 16, shift=i) for i in range(8)], device=device)
        out["batch8_aggregate_tok_s"] = 8 * n / timed_generate(model, batch, n)
        with model.disable_adapter():
            out["base_only_decode_tok_s"] = decode_rate(model, short, n)
    return out


def decode_rate(model: Any, ids: torch.Tensor, n: int) -> float:
    """Tokens a second of `generate` past the first: n tokens more over the time they added,
    each time the median of three (one slow run on a busy host once made it negative)."""
    one = statistics.median(timed_generate(model, ids, 1) for _ in range(3))
    many = statistics.median(timed_generate(model, ids, n + 1) for _ in range(3))
    return n / max(many - one, 1e-9)


def check_logits(loaded: LoadedModel, adapter: Path, ids: list[int]) -> dict:
    """Lean forward vs PEFT on one prompt: relative L2 error of the logits, same argmax."""
    tensor = torch.tensor([ids], device=loaded.device)
    with peft_adapter(loaded, adapter) as model, torch.inference_mode():
        lean = batched_forward(model, slots=1, max_tokens=len(ids) + 1)
        ref = model(tensor).logits[0, -1].float()
        got = lean.prefill(0, ids, "a0")
        with model.disable_adapter():
            ref_base = model(tensor).logits[0, -1].float()
        got_base = lean.prefill(0, ids, None)
    return {
        "prefill_logits_rel_l2": float((got - ref).norm() / ref.norm()),
        "same_argmax": bool(got.argmax() == ref.argmax()),
        "base_only_prefill_logits_rel_l2": float((got_base - ref_base).norm() / ref_base.norm()),
        "base_only_same_argmax": bool(got_base.argmax() == ref_base.argmax()),
    }


def decode_logits(
    loaded: LoadedModel, adapter: Path, override: Any, ids: list[int], rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step's logits on the batched forward with the NF4 `override` (None:
    bitsandbytes as loaded), as serving runs it: one row on the adapter through its slot (the
    one-row kernels' fused epilogue), then `rows` rows, every other on the adapter, through
    the row mask (the many-row kernels). Returns (one row (V,), rows (rows, V))."""
    device = loaded.device
    with peft_adapter(loaded, adapter) as model, torch.inference_mode():
        batch = batched_forward(
            model, slots=rows, max_tokens=len(ids) + 2, linear_override=override
        )
        adapters = ["a0" if row % 2 == 0 else None for row in range(rows)]
        for slot, name in enumerate(adapters):
            batch.prefill(slot, ids, name)
        tokens = torch.tensor(ids[-rows:] * rows, device=device)[:rows]
        positions = torch.full((rows,), len(ids), device=device)
        slot = batch.lora.names.index("a0")
        one = batch.decode(tokens[:1], positions[:1], len(ids) + 1, lora_slot=slot)[0]
        mask = batch.lora.row_mask(adapters, rows)
        many = batch.decode(tokens, positions, len(ids) + 1, lora_mask=mask)
        del batch
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return one.float(), many.float()


def agreement(reference: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> dict:
    """How close a variant's `decode_logits` are to the reference's: relative L2 and the
    share of rows with the same argmax, for one row and for many."""
    out = {}
    for label, ref, new in zip(("one_row", "rows"), reference, got, strict=True):
        ref, new = ref.reshape(-1, ref.shape[-1]), new.reshape(-1, new.shape[-1])
        out[f"{label}_logits_rel_l2"] = float((new - ref).norm() / ref.norm())
        out[f"{label}_same_argmax"] = float((new.argmax(-1) == ref.argmax(-1)).float().mean())
    return out


def greedy_reference(loaded: LoadedModel, adapter: Path, ids: list[int], n: int) -> list[int]:
    tensor = torch.tensor([ids], device=loaded.device)
    with peft_adapter(loaded, adapter) as model, torch.inference_mode():
        out = greedy_generate(model, tensor, n)
    return out[0, len(ids) :].tolist()


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (median of 20)."""
    if not torch.cuda.is_available():
        return float("nan")
    src = torch.randn(512 * 1024 * 1024 // 2, dtype=torch.bfloat16, device="cuda")  # 512 MiB
    dst = torch.empty_like(src)
    times = []
    for _ in range(25):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * src.numel() * src.element_size() / statistics.median(times[5:])


def decode_bytes(model: Any, adapter: Path) -> int:
    """What one batch-1 decode step must read: every weight once (4-bit packed + scales,
    embeddings row aside, lm_head), plus one adapter's factors."""
    import bitsandbytes as bnb

    total = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            total += module.weight.numel() * module.weight.element_size()
            total += state.absmax.numel() * state.absmax.element_size()
        elif isinstance(module, torch.nn.Linear) or "Norm" in type(module).__name__:
            total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    return total + (adapter / "adapter_model.safetensors").stat().st_size


def engine_in_child(
    model: str,
    variant: str,
    max_batch: int,
    smoke: bool,
    work: str,
    max_context_tokens: int = 2048,
    max_queue: int = 512,
) -> Any:
    """The engine `bench/serve_gpu.py` (and `serve_gpu_load.py`) measures, built again inside an
    engine process (`EngineProcess(build=partial(engine_in_child, ...))`): the same
    random-weight model (same seed), routing and switches, with no weights file to load."""
    from app.engine.kernels.nf4_routing import nf4_override
    from app.engine.schedulers.batch import BatchEngine
    from bench.serve_switches import apply_variant

    routing = apply_variant(variant)
    loaded, _ = build_model(smoke, Path(work), model)
    engine = BatchEngine(
        loaded,
        max_batch=max_batch,
        max_queue=max_queue,
        max_context_tokens=max_context_tokens,
        linear_override=nf4_override(loaded, routing),
    )
    engine.ready.wait(600)
    return engine
