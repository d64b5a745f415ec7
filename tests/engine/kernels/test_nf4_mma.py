"""The tensor-core NF4 GEMV's packing holds bitsandbytes' weight in the mma operand layout.

The CUDA kernel itself runs only on a GPU (bench/nf4_mma_gpu.py checks and times it there);
here the layout is checked twice: by `dequantize_mma` and by reading the packed words the way
the PTX ISA defines the m16n8k16 A fragment, lane by lane, independently of the packer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from app.engine.kernels.gemv_grid import split_parts, splits_k  # noqa: E402
from app.engine.kernels.nf4_format import NF4_CODE  # noqa: E402
from app.engine.kernels.nf4_mma import (  # noqa: E402
    CANDIDATE_GEMV,
    CANDIDATE_K_ORDER,
    K_ORDERS,
    KernelVariant,
    Shrink,
    concat_mma,
    dequantize_mma,
    gemv_settings,
    kernel_source,
    mma_reason,
    nf4_mma_gemv,
    pack_mma,
)
from app.engine.kernels.nf4_mma_rows import (  # noqa: E402
    MAX_ROWS,
    nf4_mma_rows,
    nf4_mma_rows_shared,
    rows_chunks,
)
from bench.cuda_offline import compile_errors, nvrtc_available, register_use  # noqa: E402
from tests.engine.kernels.nf4_reference import bnb_dense, make_linear4bit, rel_err  # noqa: E402
from tests.support.bench_smoke import run_smoke  # noqa: E402


@pytest.mark.parametrize("k_order", sorted(K_ORDERS))
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize(("n", "k"), [(32, 128), (48, 320)])
def test_packing_round_trips_bitsandbytes_weight(double_quant: bool, n: int, k: int, k_order):
    module = make_linear4bit(n, k, double_quant=double_quant, seed=n + k)
    packed = pack_mma(module, k_order=k_order)
    assert packed is not None
    assert packed.words.shape == (k // 64, n // 16, 32, 4)
    assert rel_err(dequantize_mma(packed), bnb_dense(module)) < 1e-3  # fp16 scales


def fragment_tile(words: torch.Tensor, scales: torch.Tensor, k_order: int = 0) -> torch.Tensor:
    """The 16 x 64 weight tile of one (row tile, group), read as each lane's mma A fragment:
    register i of lane (g, t) holds rows g / g+8 and mma columns 2t, 2t+1 / 2t+8, 2t+9, low
    half first (PTX ISA, mma.m16n8k16 for .bf16), one word per 16-column k step. Which k of
    the group an mma column of step j is: 16 j + column (order 0), or for order 1 the
    lane-contiguous 16 t + 4 j + 2 h + e (h: the second column pair, e: the half)."""
    tile = torch.zeros(16, 64)
    code = torch.tensor(NF4_CODE)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for step in range(4):
            word = int(words[lane, step]) & 0xFFFFFFFF
            nibbles = [(word >> (4 * p)) & 0xF for p in range(8)]
            places = [(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]
            for register, (row, col) in enumerate(places):
                for half in range(2):
                    value = code[nibbles[2 * register + half]]
                    k = 16 * step + col + half
                    if k_order == 1:
                        k = 16 * t + 4 * step + 2 * (register // 2) + half
                    tile[row, k] = value * float(scales[row])
    return tile


@pytest.mark.parametrize("k_order", sorted(K_ORDERS))
def test_words_are_mma_fragments(k_order: int):
    module = make_linear4bit(32, 128, double_quant=True, seed=5)
    packed = pack_mma(module, k_order=k_order)
    dense = bnb_dense(module)
    for tile in range(2):
        for group in range(2):
            words, scales = packed.words[group, tile], packed.scales[group, tile]
            got = fragment_tile(words, scales, k_order)
            want = dense[16 * tile : 16 * tile + 16, 64 * group : 64 * group + 64]
            assert rel_err(got, want) < 1e-3, (tile, group)


def test_cpu_path_multiplies_like_bitsandbytes():
    module = make_linear4bit(64, 256, double_quant=True, seed=2)
    x = torch.randn(1, 256).bfloat16()
    out = nf4_mma_gemv(x, pack_mma(module))
    assert out.shape == (1, 64) and out.dtype == torch.bfloat16
    assert rel_err(out, x.float() @ bnb_dense(module).T) < 1e-2
    with pytest.raises(ValueError, match="one row"):
        nf4_mma_gemv(torch.randn(2, 256).bfloat16(), pack_mma(module))


def test_lora_and_gelu_epilogue_on_cpu():
    module = make_linear4bit(32, 128, double_quant=True, seed=4)
    x = torch.randn(1, 128).bfloat16()
    t = torch.randn(1, 8).bfloat16()
    stacked_b = torch.randn(32, 24).bfloat16()  # three adapters' B side by side
    b = stacked_b[:, 8:16]  # the second one's, a strided view as LoraBank hands it
    want = torch.nn.functional.gelu(x.float() @ bnb_dense(module).T + t.float() @ b.float().T)
    out = nf4_mma_gemv(x, pack_mma(module), lora=(t, b), gelu=True)
    assert rel_err(out, want) < 1e-2
    plain = nf4_mma_gemv(x, pack_mma(module))
    assert rel_err(plain, want) > 0.1  # the epilogue did something


def test_joined_projections_give_each_part_its_own_product_and_update():
    """q, k, v packed side by side (`concat_mma`): one product, and with `splits` each part's
    rows read their own rank of t, as three separate GEMVs with their own updates would."""
    parts = [make_linear4bit(n, 128, double_quant=True, seed=n) for n in (64, 32, 32)]
    packs = [pack_mma(m, k_order=1) for m in parts]
    joined = concat_mma(packs)
    assert (joined.out_features, joined.in_features) == (128, 128)
    assert torch.equal(dequantize_mma(joined), torch.cat([dequantize_mma(p) for p in packs]))
    x = torch.randn(1, 128).bfloat16()
    t = torch.randn(1, 3 * 8).bfloat16()
    b = torch.randn(128, 8 * 4).bfloat16()[:, 8:16]  # one slot's columns of a joined B
    out = nf4_mma_gemv(x, joined, lora=(t, b), splits=(64, 96))
    starts = (0, 64, 96, 128)
    want = torch.cat([
        nf4_mma_gemv(x, p, lora=(t[:, 8 * i : 8 * (i + 1)], b[starts[i] : starts[i + 1]]))
        for i, p in enumerate(packs)
    ], dim=-1)  # fmt: skip
    assert torch.equal(out, want)
    with pytest.raises(ValueError, match="same rank"):
        nf4_mma_gemv(x, joined, lora=(t[:, :20], b), splits=(64, 96))
    with pytest.raises(ValueError, match="multiples of 16"):
        nf4_mma_gemv(x, joined, lora=(t, b), splits=(64, 90))
    with pytest.raises(ValueError, match="same input width"):
        concat_mma([packs[0], pack_mma(make_linear4bit(32, 256, double_quant=True, seed=1))])


def test_a_shrink_gives_the_update_of_its_activations_on_cpu():
    """`Shrink` (A, B): where the kernel cannot compute t itself (here: no GPU), t is x A.T
    rounded to bf16 first, so the answer is the two-launch one, bit for bit."""
    parts = [make_linear4bit(n, 128, double_quant=True, seed=n) for n in (64, 32, 32)]
    joined = concat_mma([pack_mma(m, k_order=1) for m in parts])
    x = torch.randn(1, 128).bfloat16()
    a = torch.randn(3 * 8, 128).bfloat16()
    b = torch.randn(128, 8 * 4).bfloat16()[:, 8:16]
    t = torch.nn.functional.linear(x, a)
    want = nf4_mma_gemv(x, joined, lora=(t, b), splits=(64, 96), gelu=True, gelu_from=96)
    got = nf4_mma_gemv(x, joined, lora=Shrink(a, b), splits=(64, 96), gelu=True, gelu_from=96)
    assert torch.equal(got, want)
    assert not torch.equal(got, nf4_mma_gemv(x, joined, splits=(64, 96), gelu=True, gelu_from=96))


def test_the_epilogue_adds_a_residual_before_its_one_rounding_on_cpu():
    module = make_linear4bit(32, 128, double_quant=True, seed=6)
    packed = pack_mma(module)
    x = torch.randn(1, 128).bfloat16()
    residual = (torch.randn(1, 32) * 4).bfloat16()
    want = (x.float() @ bnb_dense(module).T + residual.float()).bfloat16()
    got = nf4_mma_gemv(x, packed, residual=residual)
    assert rel_err(got, want) < 1e-2
    assert rel_err(nf4_mma_gemv(x, packed), want) > 0.1  # the residual was added
    with pytest.raises(ValueError, match="residual must be the 32 outputs"):
        nf4_mma_gemv(x, packed, residual=residual[:, :16])


def test_an_unknown_k_order_is_refused():
    with pytest.raises(ValueError, match="k_order must be one of"):
        pack_mma(make_linear4bit(32, 128, double_quant=True, seed=1), k_order=2)


def test_unsupported_shapes_say_why():
    assert "out_features" in mma_reason(make_linear4bit(40, 128, double_quant=True, seed=1))
    assert pack_mma(make_linear4bit(40, 128, double_quant=True, seed=1)) is None
    assert mma_reason(make_linear4bit(32, 128, double_quant=True, blocksize=32, seed=1)) is not None


def test_kernel_source_is_complete():
    source = kernel_source(KernelVariant(8, tiles=2, chunks=4, korder=1, chain=1))
    assert "@" not in source and "#define WARPS 8" in source
    assert "#define TILES 2" in source and "#define CHUNKS 4" in source
    assert "#define KORDER 1" in source and "#define CHAIN 1" in source
    assert "#define PREFETCH 0" in source
    assert "#define PREFETCH 1" in kernel_source(KernelVariant(16, prefetch=1))
    assert source.count("#define LO") == 4 and "mma.sync.aligned.m16n8k16" in source


@pytest.mark.parametrize("k_order", sorted(K_ORDERS))
@pytest.mark.parametrize("rows", [2, 9, MAX_ROWS])
def test_rows_path_multiplies_like_bitsandbytes_on_cpu(rows: int, k_order: int):
    module = make_linear4bit(48, 128, double_quant=True, seed=rows)
    x = torch.randn(rows, 128).bfloat16()
    out = nf4_mma_rows(x.view(rows, 1, 128), pack_mma(module, k_order=k_order))
    assert out.shape == (rows, 1, 48) and out.dtype == torch.bfloat16
    assert rel_err(out.view(rows, 48), x.float() @ bnb_dense(module).T) < 1e-2
    with pytest.raises(ValueError, match=f"1 to {MAX_ROWS} rows of 128"):
        nf4_mma_rows(torch.randn(MAX_ROWS + 1, 128).bfloat16(), pack_mma(module))


def test_rows_with_x_in_shared_memory_multiply_like_bitsandbytes_on_cpu():
    module = make_linear4bit(64, 256, double_quant=True, seed=5)
    x = torch.randn(9, 256).bfloat16()
    want = nf4_mma_rows(x, pack_mma(module, k_order=1))
    assert torch.equal(nf4_mma_rows_shared(x, pack_mma(module, k_order=1)), want)
    assert rel_err(want, x.float() @ bnb_dense(module).T) < 1e-2


def test_rows_compile_to_power_of_two_chunks():
    """Few compiled variants: 1-8 rows one chunk, 9-16 two, 17-32 four, 33-64 eight."""
    assert [rows_chunks(r) for r in (1, 8, 9, 16, 17, 32, 33, 64)] == [1, 1, 2, 2, 4, 4, 8, 8]


@pytest.mark.parametrize(
    "variant",
    [
        KernelVariant(16),
        KernelVariant(16, depth=2, decode=0),
        KernelVariant(8, tiles=2, chunks=4),
        KernelVariant(16, tiles=4, chunks=8, korder=1),
        KernelVariant(4, chunks=2, korder=1, chain=1),
        KernelVariant(16, depth=2, chain=1),
        KernelVariant(16, decode=2, korder=1, chain=1),
        KernelVariant(8, decode=2, tiles=2, chunks=8),
        KernelVariant(16, decode=2, korder=1, chain=1, lean=1),
        KernelVariant(8, decode=1, lean=1),
        KernelVariant(16, prefetch=1),
        KernelVariant(16, depth=2, decode=0, prefetch=1),
        KernelVariant(8, korder=1, chain=1, lean=1, prefetch=1),
        KernelVariant(4, decode=2, prefetch=1),
        KernelVariant(16, decode=2, korder=1, chain=1, lean=1, prefetch=1),
        KernelVariant(8, tiles=2, chunks=4, korder=1, ahead=1),
        KernelVariant(8, decode=2, tiles=2, chunks=4, korder=1, ahead=1),
        KernelVariant(16, tiles=1, chunks=1, ahead=1),
        KernelVariant(16, decode=2, korder=1, chain=1, lean=1, prefetch=1, shrink=1),
        KernelVariant(16, decode=1, shrink=1),
        KernelVariant(8, depth=2, decode=0, prefetch=1, shrink=1),
        KernelVariant(8, tiles=1, chunks=4, korder=1),  # + nf4_mma_rows_shared
        KernelVariant(8, decode=0, tiles=1, chunks=8, korder=1),
        KernelVariant(4, tiles=2, chunks=2, korder=1),
        KernelVariant(16, decode=2, korder=1, chain=1, lean=1, prefetch=1, occupy=2),
        KernelVariant(16, decode=2, korder=1, chain=1, lean=1, prefetch=1, residual=1),
        KernelVariant(16, decode=2, korder=1, chain=1, lean=1, prefetch=1, pdl=1, l2_next=1),
        KernelVariant(16, decode=2, korder=1, chain=1, lean=1, prefetch=1, pdl=1, shrink=1),
        KernelVariant(16, decode=1, pdl=1),
        KernelVariant(16, decode=2, korder=1, chain=1, lean=1, prefetch=1, pdl=1, split_k=1),
        KernelVariant(16, decode=1, lean=1, residual=1, l2_next=1, split_k=1),
    ],
    ids=str,
)
def test_kernel_source_compiles_for_hopper(variant):
    """NVRTC compiles both kernels for sm_90 here, without a GPU: a broken template fails
    `make test`, not the first run on a card."""
    if not nvrtc_available():
        pytest.fail("NVRTC is missing: `make test` installs nvidia-cuda-nvrtc-cu12")
    assert compile_errors(kernel_source(variant)) is None


@pytest.mark.parametrize(("pdl", "residual"), [(0, 0), (1, 0), (1, 1)], ids=str)
def test_served_gemv_leaves_registers_for_its_blocks_on_each_sm(pdl: int, residual: int):
    """The one-row GEMV's grid has `per_sm` blocks an SM, which run at once only if their
    registers fit the SM's 65,536. An 88-register build (b066b7e to 0c74a19) ran one at a
    time and every weight took 20-27 % longer on an H100 (nf4-mma-rows-quick-h100.json); so
    each build a decode step launches keeps within that, without spilling."""
    if not nvrtc_available():
        pytest.fail("NVRTC is missing: `make test` installs nvidia-cuda-nvrtc-cu12")
    warps, depth, decode, per_sm, chain, lean, prefetch, occupy, l2_next, split_k = gemv_settings(
        CANDIDATE_GEMV
    )
    variant = KernelVariant(
        warps, depth, decode, korder=CANDIDATE_K_ORDER, chain=chain, lean=lean,
        prefetch=prefetch, occupy=occupy, residual=residual, pdl=pdl, l2_next=l2_next,
        split_k=split_k,
    )  # fmt: skip
    registers, spilled = register_use(kernel_source(variant))["nf4_mma_gemv"]
    assert registers * warps * 32 * per_sm <= 65536, registers
    assert spilled == 0


def test_stream_k_is_taken_where_whole_tiles_leave_the_last_wave_idle():
    sms = 132  # an H100's, one GEMV block each at a time
    assert splits_k(284, sms)  # Falcon-7B's dense and dense_4h_to_h: 2.15 of 3 waves busy
    assert splits_k(64, sms)  # 1,024 outputs: half the SMs would idle
    for tiles in (256, 384, 1428, 1792):  # Llama-3.1-8B's o/down, q|k|v, gate|up; Falcon's joined
        assert not splits_k(tiles, sms), tiles


@pytest.mark.parametrize(
    ("tiles", "groups", "blocks"), [(284, 284, 132), (284, 71, 132), (49, 10, 132), (7, 3, 20)]
)
def test_stream_k_workspace_holds_every_block_a_tile_is_spread_over(tiles, groups, blocks):
    """The kernel gives block b the pairs [b T / B, (b + 1) T / B) of the tile-major (tile,
    group) order and finds a pair's block as ceil((p + 1) B / T) - 1; the workspace has a row
    for each block one tile is spread over, for the most-spread tile."""
    total = tiles * groups

    def block_of(pair: int) -> int:
        return -(-(pair + 1) * blocks // total) - 1

    starts = [b * total // blocks for b in range(blocks)]
    for pair in range(total):  # the kernel's formula inverts the runs
        b = block_of(pair)
        assert starts[b] <= pair and (b + 1 == blocks or pair < starts[b + 1])
    spread = max(block_of(t * groups + groups - 1) - block_of(t * groups) + 1 for t in range(tiles))
    assert spread <= split_parts(tiles, groups, blocks) <= spread + 1


def test_rows_bench_smoke(tmp_path: Path):
    """bench/nf4_mma_rows_gpu.py's own logic (kernels, step totals, the wrong-result check,
    JSON) on CPU with tiny shapes."""
    result = run_smoke("nf4_mma_rows_gpu.py", tmp_path / "rows.json")
    assert result["wrong_results"] == [] and len(result["shapes"]) == 2
    for shape in result["shapes"]:
        assert sorted(map(int, shape["rows"])) == [1, 2, 4, 8, 16, 32, 64]
        assert all(cell["mma_rows"]["rel_err"] < 1e-2 for cell in shape["rows"].values())
    steps = result["decode_step_projections_ms"]["tiny"]
    assert steps["1"]["mma_gemv"] > 0 and steps["64"]["mma_rows"] > 0
