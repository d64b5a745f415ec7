"""The one-launch rotary + KV-cache write gives the torch decode path's queries and cache.

The kernel runs under Triton's CPU interpreter here (it truncates where a GPU rounds to
nearest, hence the bf16 tolerance; float32 agrees to rounding); FalconBlocks' own
`_split_rotated` and indexed cache writes are the reference.
"""

from __future__ import annotations

import textwrap

from tests.subprocess_python import run_json, run_python

CHECK = textwrap.dedent(
    """
    import json, types, torch
    from app.engine.models.falcon import FalconBlocks
    from app.engine.kernels.rotary_cache import rotate_into_cache
    torch.manual_seed(0)
    heads, dim, slots, tokens = 4, 16, 4, 32
    report = {}
    for dtype in (torch.float32, torch.bfloat16):
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        angles = torch.outer(torch.arange(tokens).float(), inv)
        table = torch.cat([angles, angles], dim=-1)
        cos, sin = table.cos().to(dtype), table.sin().to(dtype)
        positions = torch.tensor([0, tokens - 1, 7])
        qkv = torch.randn(3, 1, (heads + 2) * dim).to(dtype)
        shape = (slots, 1, tokens, dim)
        k_ref, v_ref = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
        k_got, v_got = k_ref.clone(), v_ref.clone()

        fake = types.SimpleNamespace(n_kv=1, n_heads=heads, head_dim=dim)
        c = cos[positions].unsqueeze(1).unsqueeze(1)
        s = sin[positions].unsqueeze(1).unsqueeze(1)
        q_ref, k, v = FalconBlocks._split_rotated(fake, qkv, c, s)
        rows = torch.arange(3)
        k_ref[rows, :, positions] = k[:, :, 0]
        v_ref[rows, :, positions] = v[:, :, 0]

        q_got = rotate_into_cache(qkv, cos, sin, positions, k_got, v_got, heads)

        def rel(a, b):
            return ((a.float() - b.float()).norm() / b.float().norm()).item()

        report[str(dtype)] = {
            "q": rel(q_got, q_ref), "q_shape": list(q_got.shape),
            "k": rel(k_got, k_ref), "v_equal": bool(torch.equal(v_got, v_ref)),
            "untouched": bool(torch.equal(k_got[3], k_ref[3])),
        }
    print(json.dumps(report))
    """
)


def test_kernel_matches_the_torch_decode_path():
    report = run_json(CHECK, interpret=True)
    for dtype, found in report.items():
        tolerance = 1e-6 if "float32" in dtype else 1e-2
        assert found["q"] < tolerance and found["k"] < tolerance, (dtype, found)
        assert found["q_shape"] == [3, 4, 1, 16]
        assert found["v_equal"] and found["untouched"], (dtype, found)


PTX = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from app.engine.kernels.rotary_cache import _rotary_cache
    pointers = dict.fromkeys(["qkv_ptr", "cos_ptr", "sin_ptr", "q_ptr", "k_ptr", "v_ptr"], "*bf16")
    signature = {**pointers, "pos_ptr": "*i64", "stride_row": "i32", "stride_slot": "i32",
                 "stride_pos": "i32", "H": "constexpr", "D": "constexpr", "EXACT": "constexpr"}
    source = ASTSource(_rotary_cache, signature, constexprs={"H": 71, "D": 64, "EXACT": True})
    print(triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"])
    """
)


def test_compiled_kernel_rounds_each_product_like_torch():
    """Falcon-7B's shapes compiled for an H200 (no GPU needed): two rounded fp32 products and a
    bf16 add, no FMA that would skip the product's rounding torch does."""
    ptx = run_python(PTX)
    assert "fma" not in ptx
    assert ptx.count("mul.rn.f32") == 2
    assert ptx.count("cvt.rn.bf16.f32") == 2


GQA_CHECK = textwrap.dedent(
    """
    import json, types, torch
    from app.engine.models.llama import LlamaBlocks
    from app.engine.kernels.rotary_cache import rotate_gqa_into_cache
    torch.manual_seed(0)
    heads, kv, dim, slots, tokens = 8, 2, 16, 4, 32
    report = {}
    for dtype in (torch.float32, torch.bfloat16):
        inv = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        angles = torch.outer(torch.arange(tokens).float(), inv)
        table = torch.cat([angles, angles], dim=-1)
        cos, sin = table.cos().to(dtype), table.sin().to(dtype)
        positions = torch.tensor([0, tokens - 1, 7])
        # views as LlamaBlocks._heads makes them: (B, 1, n*D) -> (B, n, 1, D)
        q = torch.randn(3, 1, heads * dim).to(dtype).view(3, 1, heads, dim).transpose(1, 2)
        k = torch.randn(3, 1, kv * dim).to(dtype).view(3, 1, kv, dim).transpose(1, 2)
        v = torch.randn(3, 1, kv * dim).to(dtype).view(3, 1, kv, dim).transpose(1, 2)
        shape = (slots, kv, tokens, dim)
        k_ref, v_ref = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
        k_got, v_got = k_ref.clone(), v_ref.clone()

        c = cos[positions].view(3, 1, 1, dim)
        s = sin[positions].view(3, 1, 1, dim)
        q_ref, k_rot = LlamaBlocks._rotate(q, k, c, s)
        rows = torch.arange(3)
        k_ref[rows, :, positions] = k_rot[:, :, 0]
        v_ref[rows, :, positions] = v[:, :, 0]

        q_got = rotate_gqa_into_cache(q, k, v, cos, sin, positions, k_got, v_got)

        def rel(a, b):
            return ((a.float() - b.float()).norm() / b.float().norm()).item()

        report[str(dtype)] = {
            "q": rel(q_got, q_ref), "q_shape": list(q_got.shape),
            "k": rel(k_got, k_ref), "v_equal": bool(torch.equal(v_got, v_ref)),
            "untouched": bool(torch.equal(k_got[3], k_ref[3])),
        }
    print(json.dumps(report))
    """
)


def test_gqa_kernel_matches_the_llama_decode_path():
    report = run_json(GQA_CHECK, interpret=True)
    for dtype, found in report.items():
        tolerance = 1e-6 if "float32" in dtype else 1e-2
        assert found["q"] < tolerance and found["k"] < tolerance, (dtype, found)
        assert found["q_shape"] == [3, 8, 1, 16]
        assert found["v_equal"] and found["untouched"], (dtype, found)
