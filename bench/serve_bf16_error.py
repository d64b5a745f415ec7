"""Is the lean batched Falcon forward as accurate in bf16 as transformers' own? (CPU, minutes)

    .venv/bin/python bench/serve_bf16_error.py     # writes bench/results/serve-bf16-error-cpu.json

On the GPU, `serve_gpu.py` found Teller's prefill logits 1.6 % (relative L2) from PEFT's on a
random-weight Falcon-7B in bf16. This script asks whether that is the lean path's error or bf16
rounding: Falcon-7B-wide models with random weights and 2 and 8 layers, the same weights in
float32 (the reference) and bf16; transformers' forward and Teller's `FalconBatch.prefill` in
bf16 are each compared with the float32 reference on one 40-token prompt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.models.falcon import FalconBatch  # noqa: E402
from bench.train_gpu import falcon_7b_config  # noqa: E402

OUT = REPO / "bench" / "results" / "serve-bf16-error-cpu.json"


def relative(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x - reference).norm() / reference.norm())


def measure(layers: int) -> dict:
    from transformers import AutoModelForCausalLM

    config = falcon_7b_config()
    config.num_hidden_layers = layers
    torch.manual_seed(0)
    exact = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    half = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    half.load_state_dict({k: v.to(torch.bfloat16) for k, v in exact.state_dict().items()})
    ids = torch.randint(0, 49_000, (1, 40))
    with torch.inference_mode():
        reference = exact(ids).logits[0, -1].double()
        transformers_bf16 = half(ids).logits[0, -1].double()
        teller_bf16 = FalconBatch(half, slots=1, max_tokens=41).prefill(0, ids[0].tolist(), None)
    teller_bf16 = teller_bf16.double()
    return {
        "layers": layers,
        "transformers_bf16_vs_fp32": relative(transformers_bf16, reference),
        "teller_bf16_vs_fp32": relative(teller_bf16, reference),
        "teller_vs_transformers_bf16": relative(teller_bf16, transformers_bf16),
        "argmax_equal_fp32": {
            "transformers_bf16": int(transformers_bf16.argmax()) == int(reference.argmax()),
            "teller_bf16": int(teller_bf16.argmax()) == int(reference.argmax()),
        },
    }


def main() -> int:
    rows = [measure(layers) for layers in (2, 8)]
    OUT.write_text(
        json.dumps({"device": "cpu", "torch": torch.__version__, "rows": rows}, indent=1)
    )
    print(f"{'layers':>6} {'HF bf16 vs fp32':>16} {'Teller bf16 vs fp32':>20} {'Teller vs HF':>13}")  # noqa: T201
    for r in rows:
        print(  # noqa: T201
            f"{r['layers']:>6} {r['transformers_bf16_vs_fp32']:>16.4f} "
            f"{r['teller_bf16_vs_fp32']:>20.4f} {r['teller_vs_transformers_bf16']:>13.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
