"""The tensor-core NF4 kernels on a GPU: every launch configuration gives the dequantized
product, one row (the GEMV) and 2-64 rows (the batched-decode kernel), on shapes whose row
tiles do not fill the last block's set and with rows that leave chunks part empty."""

from __future__ import annotations

import dataclasses

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernels"),
]

from app.engine.kernels.gemv_grid import splits_k  # noqa: E402
from app.engine.kernels.nf4_format import reference_row  # noqa: E402
from app.engine.kernels.nf4_mma import (  # noqa: E402
    CANDIDATE_GEMV,
    CHAIN,
    DEPTH,
    K_ORDERS,
    PER_SM,
    WARPS,
    Shrink,
    nf4_mma_gemv,
    pack_mma,
)
from app.engine.kernels.nf4_mma_rows import (  # noqa: E402
    nf4_mma_rows,
    nf4_mma_rows_shared,
    rows_config,
)
from tests.engine.kernels.nf4_reference import bnb_dense, make_linear4bit, rel_err  # noqa: E402

SERVED_SHAPES = [
    (4096, 4096), (4096, 6144), (4096, 28672), (14336, 4096), (4544, 4544), (4544, 22848),
    (18176, 4544),
]  # fmt: skip
CONFIGS = [None, (4, 1, 2), (8, 4, 1), (16, 2, 3), (8, 2, 2, 2), (8, 0, 2, 1, 1), (8, 2, 2, 2, 1)]
CONFIGS += sorted(
    {rows_config(rows, k, n) for rows in range(2, 65) for k, n in SERVED_SHAPES}
    | {(*rows_config(rows, k, n)[:4], 1) for rows in range(2, 65) for k, n in SERVED_SHAPES}
)  # decode 2 where a fourth value says so, ahead a fifth; every config the routing serves


@pytest.fixture(scope="module", params=sorted(K_ORDERS), ids=lambda o: f"k_order{o}")
def weight(request):
    module = make_linear4bit(48 * 16 + 16, 640, double_quant=True, seed=7)  # 49 row tiles
    packed = pack_mma(module, k_order=request.param)  # packed on the CPU, moved to the card
    on_card = dataclasses.replace(packed, words=packed.words.cuda(), scales=packed.scales.cuda())
    return on_card, bnb_dense(module).cuda()


@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 17, 32, 33, 64])
@pytest.mark.parametrize("config", CONFIGS)
def test_rows_kernel_gives_the_dequantized_product(weight, rows, config):
    packed, dense = weight
    x = torch.randn(rows, 640, device="cuda").bfloat16()
    out = nf4_mma_rows(x, packed, config=config)
    want = x.float() @ dense.T
    assert out.shape == (rows, dense.shape[0])
    assert rel_err(out, want) < 5e-3, (rows, config)  # bf16 rounding of the result
    for row in range(rows):  # no row swapped with another, none left at zero
        assert rel_err(out[row], want[row]) < 1e-2, (rows, config, row)


@pytest.mark.parametrize("prefetch", [0, 1])
@pytest.mark.parametrize("lean", [0, 1])
@pytest.mark.parametrize("decode", [0, 1, 2])
@pytest.mark.parametrize("chain", sorted({CHAIN, 1 - CHAIN}))
def test_gemv_with_its_epilogue_gives_the_dequantized_product(
    weight, chain, decode, lean, prefetch
):
    packed, dense = weight
    x = torch.randn(1, 640, device="cuda").bfloat16()
    t = torch.randn(1, 16, device="cuda").bfloat16()
    b = (torch.randn(dense.shape[0], 48, device="cuda") * 0.1).bfloat16()[:, 16:32]  # a bank
    config = (WARPS, DEPTH, decode, PER_SM, chain, lean, prefetch)
    plain = nf4_mma_gemv(x, packed, config=config)
    assert rel_err(plain, x.float() @ dense.T) < 5e-3
    fused = nf4_mma_gemv(x, packed, lora=(t, b), gelu=True, config=config)
    want = torch.nn.functional.gelu(x.float() @ dense.T + t.float() @ b.float().T)
    assert rel_err(fused, want) < 5e-3


@pytest.mark.parametrize("warps", [4, 16])
@pytest.mark.parametrize(
    ("rank", "shift"),
    [(4, 4), (64, 64), (128, 0), (16, 2), (6, 6), (192, 0)],  # the last three: the loop
    ids=lambda v: str(v),
)
def test_prefetched_epilogue_gives_what_the_loop_gives(weight, warps, rank, shift):
    """`prefetch`: t and B held in registers (rank <= 128, a multiple of 4, 8-byte aligned) or,
    past those, the epilogue's loop: every row of three joined projections gets its own part's
    update, through GELU from the third on, as without prefetch."""
    packed, dense = weight  # 784 rows: projections of 256, 256 and 272
    x = torch.randn(1, 640, device="cuda").bfloat16()
    t = torch.randn(1, 3 * rank, device="cuda").bfloat16()
    bank = (torch.randn(dense.shape[0], rank + 64, device="cuda") * 0.1).bfloat16()
    lora = (t, bank[:, shift : shift + rank])  # a bank's columns, aligned or not
    kwargs = {"lora": lora, "gelu": True, "splits": (256, 512), "gelu_from": 512}
    want = reference_row(x.float(), dense, lora, True, (256, 512), 512)
    outs = [
        nf4_mma_gemv(x, packed, config=(warps, DEPTH, 1, PER_SM, 0, 0, prefetch), **kwargs)
        for prefetch in (0, 1)
    ]
    for out in outs:
        assert rel_err(out, want) < 5e-3, (warps, rank, shift)
    assert rel_err(outs[1], outs[0]) < 5e-3  # fp32 sums in another order, rounded once


SHARED_CONFIGS = [None, (8, 2, 2), (4, 2, 2), (8, 1, 8), (16, 1, 2), (8, 1, 1)]


@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 17, 32, 33, 64])
@pytest.mark.parametrize("config", SHARED_CONFIGS, ids=str)
def test_rows_kernel_with_x_in_shared_memory_gives_the_dequantized_product(weight, rows, config):
    """`nf4_mma_rows_shared`: warps splitting the row tiles, x staged per group, slices of K
    (more slots than sets: several slices, their partials added by a set's last one)."""
    packed, dense = weight
    x = torch.randn(rows, 640, device="cuda").bfloat16()
    if packed.k_order != 1:
        with pytest.raises(ValueError, match="k order 1"):
            nf4_mma_rows_shared(x, packed, config=config)
        return
    out = nf4_mma_rows_shared(x, packed, config=config)
    want = x.float() @ dense.T
    assert out.shape == (rows, dense.shape[0])
    assert rel_err(out, want) < 5e-3, (rows, config)
    for row in range(rows):  # no row swapped with another, none left at zero
        assert rel_err(out[row], want[row]) < 1e-2, (rows, config, row)


def test_rows_kernel_with_x_in_shared_memory_replays_in_a_cuda_graph(weight):
    """The per-set counters are zero again after each launch: replays with new activations
    each give their own product (eight slices of K a set here)."""
    packed, dense = weight
    if packed.k_order != 1:
        pytest.skip("k order 1 only")
    x = torch.randn(32, 640, device="cuda").bfloat16()
    nf4_mma_rows_shared(x, packed, config=(8, 1, 8))  # compiles, makes the workspace
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = nf4_mma_rows_shared(x, packed, config=(8, 1, 8))
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, x.float() @ dense.T) < 5e-3


def test_gemv_with_registers_for_two_blocks_an_sm_gives_what_it_gives_with_one(weight):
    """`occupy` 2 (64 registers, the build the bench times beside the served one) and
    `l2_next` (L2 asked for the next tile): the same product and epilogue."""
    packed, dense = weight
    x = torch.randn(1, 640, device="cuda").bfloat16()
    t = torch.randn(1, 16, device="cuda").bfloat16()
    b = (torch.randn(dense.shape[0], 16, device="cuda") * 0.1).bfloat16()
    want = reference_row(x.float(), dense, (t, b), True)
    for occupy, l2_next in ((1, 0), (2, 0), (1, 1), (2, 1)):
        config = (*CANDIDATE_GEMV[:7], occupy, l2_next)
        out = nf4_mma_gemv(x, packed, lora=(t, b), gelu=True, config=config)
        assert rel_err(out, want) < 5e-3, config


@pytest.mark.parametrize("outputs", [784, 4544], ids=lambda n: f"{n // 16}_tiles")
def test_stream_k_gemv_gives_what_whole_tiles_give(outputs):
    """`split_k`: where whole tiles would leave the last wave of SMs idle, each block streams
    an equal run of K and a tile cut between blocks is finished by the last to arrive. The
    same product and epilogue (LoRA, GELU, residual) as whole tiles; the same bits launch
    after launch, and replayed from a CUDA graph with new inputs (the counters reset)."""
    from app.engine.kernels.availability import sm_count

    module = make_linear4bit(outputs, 1024, double_quant=True, seed=5)
    packed = pack_mma(module, k_order=1)
    packed = dataclasses.replace(packed, words=packed.words.cuda(), scales=packed.scales.cuda())
    dense = bnb_dense(module).cuda()
    assert splits_k(outputs // 16, sm_count(torch.device("cuda")))
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(1, 1024, device="cuda", generator=gen).bfloat16()
    t = torch.randn(1, 16, device="cuda", generator=gen).bfloat16()
    b = (torch.randn(outputs, 16, device="cuda", generator=gen) * 0.1).bfloat16()
    residual = (torch.randn(1, outputs, device="cuda", generator=gen) * 3).bfloat16()
    streamed, whole = (*CANDIDATE_GEMV[:7], 1, 1, 1), (*CANDIDATE_GEMV[:7], 1, 1, 0)

    def gemv(config: tuple[int, ...]) -> torch.Tensor:
        return nf4_mma_gemv(x, packed, lora=(t, b), gelu=True, config=config, residual=residual)

    want = reference_row(x.float(), dense, (t, b), True, residual=residual)
    first = gemv(streamed)
    assert rel_err(first, want) < 5e-3
    assert rel_err(first, gemv(whole).float()) < 5e-3
    assert torch.equal(gemv(streamed), first)  # block order, not arrival order, sums the parts
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gemv(streamed)
    for _ in range(3):
        x.copy_(torch.randn(x.shape, device="cuda", generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        expected = reference_row(x.float(), dense, (t, b), True, residual=residual)
        assert rel_err(out, expected) < 5e-3


@pytest.mark.parametrize("config", [CANDIDATE_GEMV, (WARPS, DEPTH, 1, PER_SM)], ids=str)
def test_gemv_epilogue_adds_the_residual(weight, config, monkeypatch):
    """`residual`: a block's x added in the epilogue, after the LoRA update and GELU, before
    the one rounding; and the `mma` routing's `.fused` takes it where `EPILOGUE_RESIDUAL`."""
    from app.engine.kernels import nf4_routing

    packed, dense = weight
    x = torch.randn(1, 640, device="cuda").bfloat16()
    t = torch.randn(1, 16, device="cuda").bfloat16()
    b = (torch.randn(dense.shape[0], 16, device="cuda") * 0.1).bfloat16()
    residual = (torch.randn(1, dense.shape[0], device="cuda") * 3).bfloat16()
    want = reference_row(x.float(), dense, (t, b), True, residual=residual)
    out = nf4_mma_gemv(x, packed, lora=(t, b), gelu=True, config=config, residual=residual)
    assert rel_err(out, want) < 5e-3
    monkeypatch.setattr(nf4_routing, "EPILOGUE_RESIDUAL", True)
    module = _linear4bit(512, 640, False, seed=11)
    linear = nf4_routing._mma_every_row(module)
    assert linear.fused.residual
    x = torch.randn(1, 1, 640, device="cuda").bfloat16()
    residual = (torch.randn(1, 1, 512, device="cuda") * 3).bfloat16()
    got = linear.fused(x, None, False, residual=residual)
    assert rel_err(got, module(x).float() + residual.float()) < 1e-2


SHRINK_CONFIGS = [
    CANDIDATE_GEMV,  # what the mma routing serves with
    (WARPS, DEPTH, 1, PER_SM),  # the 32 KB table
    (WARPS, 2, 0, 1, 0, 0, 1),  # byte permutes, depth 2, one block an SM, prefetch
    (8, DEPTH, 2, 2, 1, 1, 0),  # eight warps, no prefetch
]


@pytest.mark.parametrize("config", SHRINK_CONFIGS, ids=str)
@pytest.mark.parametrize("rank", [16, 64, 128])
def test_gemv_computes_lora_activations_itself(weight, config, rank):
    """`Shrink`: the kernel sums t = x A.T over the grid and rounds it as the separate launch
    does; three joined parts, each its own rank of t, GELU from the third: what the two-launch
    epilogue gives."""
    packed, dense = weight  # 784 rows: 256 | 256 | 272
    x = torch.randn(1, 640, device="cuda").bfloat16()
    a = (torch.randn(3 * rank, 640, device="cuda") / 640**0.5).bfloat16()
    b = (torch.randn(dense.shape[0], rank, device="cuda") * 0.1).bfloat16()
    kwargs = {"gelu": True, "splits": (256, 512), "gelu_from": 512, "config": config}
    t = torch.nn.functional.linear(x, a)  # bf16, as low_rank_row gives it
    want = reference_row(x.float(), dense, (t, b), True, (256, 512), 512)
    two = nf4_mma_gemv(x, packed, lora=(t, b), **kwargs)
    one = nf4_mma_gemv(x, packed, lora=Shrink(a, b), **kwargs)
    assert rel_err(two, want) < 5e-3
    assert rel_err(one, want) < 5e-3, config
    assert rel_err(one, two) < 5e-3  # t's fp32 sums in another order, then the same rounding


def test_shrinking_gemv_replays_in_a_cuda_graph(weight):
    """The grid's shared sums and counters are zero again after every launch: replays with
    new activations and a new adapter's A (copied in place) each give their own product."""
    packed, dense = weight
    x = torch.randn(1, 640, device="cuda").bfloat16()
    a = (torch.randn(64, 640, device="cuda") / 640**0.5).bfloat16()
    b = (torch.randn(dense.shape[0], 64, device="cuda") * 0.1).bfloat16()
    nf4_mma_gemv(x, packed, lora=Shrink(a, b), config=CANDIDATE_GEMV)  # compiles
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = nf4_mma_gemv(x, packed, lora=Shrink(a, b), config=CANDIDATE_GEMV)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        a.copy_((torch.randn_like(a.float()) / 640**0.5).bfloat16())
        graph.replay()
        torch.cuda.synchronize()
        t = torch.nn.functional.linear(x, a)
        assert rel_err(out, reference_row(x.float(), dense, (t, b))) < 5e-3


def test_rows_kernel_replays_in_a_cuda_graph(weight):
    packed, dense = weight
    x = torch.randn(32, 640, device="cuda").bfloat16()
    nf4_mma_rows(x, packed)  # compiles before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = nf4_mma_rows(x, packed)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out, x.float() @ dense.T) < 5e-3


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 5, 64, 100])
@pytest.mark.parametrize("routing", ["mma", "hybrid"])
def test_routings_serve_every_row_count(routing, rows, bias):
    """The `mma` routing (the GEMV for one row, the rows kernel up to 64, bitsandbytes above)
    and `hybrid`, with and without a bias (Qwen2's q/k/v): what the module computes."""
    from app.engine.kernels.nf4_routing import _mma_every_row, nf4_override
    from app.engine.loader import LoadedModel

    module = bnb.nn.Linear4bit(
        512, 256, bias=bias, compute_dtype=torch.bfloat16, quant_type="nf4", device="meta"
    )
    module.weight = bnb.nn.Params4bit(
        torch.randn(256, 512) * 0.05, requires_grad=False, quant_type="nf4"
    ).to("cuda")
    if bias:
        module.bias = torch.nn.Parameter(torch.randn(256, device="cuda").bfloat16())
    if routing == "mma":
        linear = _mma_every_row(module)
    else:
        holder = torch.nn.Sequential(module)
        loaded = LoadedModel(holder, None, "test", torch.device("cuda"), torch.bfloat16, "nf4")
        linear = nf4_override(loaded, "hybrid")(module)
    assert linear is not None
    assert hasattr(linear, "fused") is (not bias)  # a bias: no fused epilogue
    x = torch.randn(rows, 1, 512, device="cuda").bfloat16()
    want = module(x).float()
    assert rel_err(linear(x), want) < 1e-2


@pytest.mark.parametrize("rows", [5, 32, 64])
def test_mma_routing_serves_rows_through_the_shared_x_kernel_when_asked(rows, monkeypatch):
    """`SHARED_ROWS_FROM`: from that row count the routing's decode steps use
    `nf4_mma_rows_shared`; what the module computes, bias added after."""
    from app.engine.kernels import nf4_routing

    monkeypatch.setattr(nf4_routing, "SHARED_ROWS_FROM", 2)
    monkeypatch.setattr(nf4_routing, "SHARED_MIN_OUT", 1024)
    module = _linear4bit(1024, 512, True, seed=3)
    linear = nf4_routing._mma_every_row(module)
    assert linear is not None
    x = torch.randn(rows, 1, 512, device="cuda").bfloat16()
    assert rel_err(linear(x), module(x).float()) < 1e-2


@pytest.mark.parametrize("rows", [5, 32, 64])
def test_mma_routing_serves_narrow_weights_through_nf4_matmul_when_asked(rows, monkeypatch):
    """`NARROW_ROWS_FROM`: from that row count a narrow weight's decode steps run the Triton
    `nf4_matmul` from its own copy, a joined group's parts side by side; what the modules
    compute, bias added after."""
    from app.engine.kernels import nf4_routing

    monkeypatch.setattr(nf4_routing, "NARROW_ROWS_FROM", 2)
    module = _linear4bit(1024, 512, True, seed=3)
    linear = nf4_routing._mma_every_row(module)
    x = torch.randn(rows, 1, 512, device="cuda").bfloat16()
    assert rel_err(linear(x), module(x).float()) < 1e-2
    parts = [_linear4bit(n, 512, False, seed=n) for n in (256, 64, 64)]
    joined = nf4_routing.MmaRouting().join(parts)
    want = torch.cat([m(x).float() for m in parts], dim=-1)
    assert rel_err(joined(x), want) < 1e-2


def _linear4bit(n: int, k: int, bias: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = bnb.nn.Linear4bit(
        k, n, bias=bias, compute_dtype=torch.bfloat16, quant_type="nf4", device="meta"
    )
    module.weight = bnb.nn.Params4bit(
        torch.randn(n, k) * 0.05, requires_grad=False, quant_type="nf4"
    ).to("cuda")
    if bias:
        module.bias = torch.nn.Parameter(torch.randn(n, device="cuda").bfloat16())
    return module


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 5, 64, 100])
def test_joined_projections_serve_every_row_count(rows, bias):
    """q, k, v joined by the `mma` routing (one launch): each part what its module computes,
    and one row's epilogue adds each part's own LoRA update (t of three ranks, one B), and
    GELU from a row on (Falcon's MLP up projection joined after its q/k/v)."""
    from app.engine.kernels.nf4_routing import MmaRouting

    parts = [_linear4bit(n, 512, bias, seed=n) for n in (256, 64, 64)]
    joined = MmaRouting().join(parts)
    assert joined is not None and joined.sizes == [256, 64, 64]
    assert hasattr(joined, "fused") is (not bias)
    x = torch.randn(rows, 1, 512, device="cuda").bfloat16()
    want = torch.cat([m(x).float() for m in parts], dim=-1)
    assert rel_err(joined(x), want) < 1e-2
    if rows == 1 and not bias:
        t = torch.randn(1, 3 * 16, device="cuda").bfloat16()
        b = (torch.randn(384, 4 * 16, device="cuda") * 0.1).bfloat16()[:, 16:32]
        update = torch.cat([
            t[:, 16 * i : 16 * (i + 1)].float() @ b[s:e].float().T
            for i, (s, e) in enumerate(((0, 256), (256, 320), (320, 384)))
        ], dim=-1)  # fmt: skip
        plain = want + update.view(1, 1, -1)
        assert rel_err(joined.fused(x, (t, b), (256, 320), None), plain) < 1e-2
        a = (torch.randn(3 * 16, 512, device="cuda") / 512**0.5).bfloat16()
        t_a = torch.nn.functional.linear(x.view(1, 512), a)  # what the kernel computes itself
        update_a = torch.cat([
            t_a[:, 16 * i : 16 * (i + 1)].float() @ b[s:e].float().T
            for i, (s, e) in enumerate(((0, 256), (256, 320), (320, 384)))
        ], dim=-1)  # fmt: skip
        shrunk = joined.fused(x, Shrink(a, b), (256, 320), None)
        assert rel_err(shrunk, want + update_a.view(1, 1, -1)) < 1e-2
        gelu_v = torch.cat([plain[..., :320], torch.nn.functional.gelu(plain[..., 320:])], -1)
        assert rel_err(joined.fused(x, (t, b), (256, 320), 320), gelu_v) < 1e-2
