"""Typed training configuration: one dataclass per concern, a docstring on every field.

Presets (`training/presets/*.yaml`) and `--set key=value` overrides fill these; nothing else
reads YAML, so a misspelt key fails here with its name instead of being silently ignored.
Fields that take one of a fixed set of values are typed as such (a `Literal` below, or
`PromptFormat`), and `training.config_io` refuses any other value naming the choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from app.contract import PromptFormat

Quantization = Literal["nf4", "8bit", "none"]
"""4-bit NormalFloat with double quantization (QLoRA), bitsandbytes 8-bit, or full weights."""
ComputeDtype = Literal["auto", "bfloat16", "float32"]
"""`auto` is bf16 on a GPU that has it, else float32."""
Device = Literal["auto", "cpu", "cuda"]
"""`auto` picks the GPU when there is one."""
LoraBias = Literal["none", "all", "lora_only"]
"""PEFT's choice of biases that train with the adapter."""
OptimizerName = Literal["auto", "paged_adamw_8bit", "adamw"]
"""`auto` is paged 8-bit AdamW on CUDA with bitsandbytes, torch AdamW elsewhere."""
ScheduleName = Literal["cosine", "linear", "constant"]
"""Learning-rate decay after warmup."""
MetricSink = Literal["none"]
"""Extra metric sinks besides metrics.jsonl and loss.png (none yet)."""


@dataclass
class LoraSettings:
    """The low-rank adapter attached to the frozen base model."""

    r: int = 64
    """Rank of the update matrices; the QLoRA paper uses 64 on every linear layer."""
    alpha: int = 16
    """Scaling numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.1
    """Dropout on the adapter input; 0.1 for models up to 13B in the QLoRA paper."""
    target_modules: list[str] = field(default_factory=list)
    """Module names to adapt; empty picks them per architecture (see training/targets.py)."""
    bias: LoraBias = "none"
    """Which biases train alongside the adapter (`none`, `all`, `lora_only`)."""


@dataclass
class DataSettings:
    """Where examples come from and how they become token sequences."""

    path: str = ""
    """Alpaca records: a .json, .jsonl, .csv or .parquet file, or a hub dataset id."""
    eval_path: str = ""
    """An explicit held-out file; empty splits `eval_fraction` off `path` instead."""
    eval_fraction: float = 0.05
    """Share of the de-duplicated records held out for evaluation when `eval_path` is empty."""
    max_eval_examples: int = 200
    """Upper bound on held-out records scored during training (keeps evaluation cheap)."""
    max_examples: int = 0
    """Use at most this many training records after the split (0 = all); for quick runs."""
    max_seq_len: int = 512
    """Tokens per example (and per packed row); longer responses are truncated."""
    packing: bool = True
    """Pack several short examples into one row (attention never crosses examples)."""
    system_prompt: str = ""
    """System message for the `chat_template` format; match the server's TELLER_SYSTEM_PROMPT."""
    allow_hub_downloads: bool = False
    """Only then may `path` be a hub dataset id (and the base model a hub id)."""


@dataclass
class OptimSettings:
    """Optimizer and learning-rate schedule."""

    lr: float = 2e-4
    """Peak learning rate after warmup."""
    optimizer: OptimizerName = "auto"
    """`paged_adamw_8bit` (bitsandbytes, CUDA), `adamw` (torch), or `auto` to pick by device."""
    weight_decay: float = 0.0
    """Decoupled weight decay on adapter weights."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam moment decay rates."""
    scheduler: ScheduleName = "cosine"
    """`cosine`, `linear` or `constant` decay after warmup."""
    warmup_ratio: float = 0.03
    """Share of the total steps spent warming the learning rate up from zero."""
    max_grad_norm: float = 0.3
    """Gradient clipping norm (0.3 in the QLoRA paper); 0 disables clipping."""


@dataclass
class TrainConfig:
    """One training run: base model, adapter, data, schedule and where results go."""

    name: str = "teller-adapter"
    """Adapter name written to teller.json."""
    base_model: str = ""
    """Local folder, name under `models_dir`, `.gguf` file or hub id; recorded as written."""
    models_dir: str = ""
    """Where named base models and tiny test models live; empty = $TELLER_MODELS_DIR or ./models."""
    prompt_format: PromptFormat = PromptFormat.ALPACA
    """`alpaca` or `chat_template`; recorded in teller.json so serving builds the same prompt."""
    quantization: Quantization = "none"
    """`nf4` (QLoRA: 4-bit NormalFloat, double quant), `8bit` or `none`."""
    quantize_on_cpu: bool = False
    """Let bitsandbytes quantize on CPU; for tests of the 4-bit path, far too slow for real runs."""
    dtype: ComputeDtype = "auto"
    """Compute dtype: `auto` (bf16 on a GPU that has it, else float32), `bfloat16`, `float32`."""
    device: Device = "auto"
    """`auto`, `cpu` or `cuda`."""
    seed: int = 42
    """Seeds data order, the split, dropout and LoRA init, so a run repeats exactly."""
    epochs: float = 1.0
    """Passes over the training rows; used when `max_steps` is 0."""
    max_steps: int = 0
    """Optimizer steps to run (0 = derive from `epochs`)."""
    micro_batch_size: int = 4
    """Rows per forward pass."""
    grad_accum: int = 4
    """Forward passes per optimizer step."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward: much less memory for about a third more time."""
    memory_budget_gb: float = 0.0
    """GPU memory to fit (e.g. 16): micro-batch, grad_accum and checkpointing are then chosen
    for it (rows per optimizer step unchanged); 0 keeps the three as configured."""
    chunked_loss: bool = True
    """Compute the loss over labelled positions in vocabulary-head chunks (no full logits)."""
    fused_mlp: bool = True
    """Run each 4-bit LoRA Falcon MLP, and each Llama-family SwiGLU MLP (Llama, Mistral, Qwen2),
    as one autograd function with one elementwise kernel each way (training/fast/fused_mlp.py,
    fused_swiglu.py): the recipe's arithmetic with a fraction of the memory traffic; a no-op
    for other models."""
    bf16_activations: bool = False
    """On a GPU, keep activations in bf16 after each layer norm: more tokens/s, but the first
    steps' loss moves further from the fp32-activation QLoRA recipe's (figures:
    bench/results/train-gpu-bf16-activations.json against train-gpu.json)."""
    cpu_threads: int = 0
    """Torch intra-op threads on CPU (0 = torch's default)."""
    log_every: int = 1
    """Steps between metrics lines."""
    eval_every: int = 0
    """Steps between held-out evaluations (0 = only at the end)."""
    save_every: int = 0
    """Steps between checkpoints that `--resume` restarts from (0 = none)."""
    output_dir: str = ""
    """Run folder (adapter/, checkpoints/, metrics.jsonl, loss.png); empty means
    training/runs/<name>."""
    report_to: MetricSink = "none"
    """Extra metric sink besides metrics.jsonl and loss.png; only `none` is available now."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The adapter."""
    data: DataSettings = field(default_factory=DataSettings)
    """The examples."""
    optim: OptimSettings = field(default_factory=OptimSettings)
    """The optimizer."""
