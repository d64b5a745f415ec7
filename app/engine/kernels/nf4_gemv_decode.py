"""nf4_gemv's `prmt` decode: the PTX that looks nibbles up in registers with byte permutes.

Kept apart from the kernel so that nf4_gemv.py holds the layout, the launch and the kernel
(and stays under the project's module size); the code tables are in `nf4_format`. See
nf4_gemv's docstring for the decodes.
"""

from __future__ import annotations

from app.engine.kernels.nf4_format import bf16_code_bits


def prmt_asm() -> str:
    """PTX turning one int32 word ($8) into its 8 nibbles' code values as fp32 ($0..$7).

    Per half-word (4 nibbles): prmt picks each nibble's byte from codes 0-7 and from codes
    8-15 (selector = nibble & 7), a third prmt picks between the two by the nibble's bit 3;
    done for the low and the high byte of the bf16 codes, then bytes are interleaved into
    bf16 pairs and widened to fp32 by a shift or a mask.
    """
    bits = bf16_code_bits()
    lo = [b & 0xFF for b in bits]
    hi = [b >> 8 for b in bits]

    def word(values: list[int]) -> str:
        return f"0x{values[0] | values[1] << 8 | values[2] << 16 | values[3] << 24:08X}"

    names = ("sel", "s", "c", "la", "lb", "lo", "hi", "pr")
    lines = ["{", ".reg .b32 gv_t<8>;"] + [f".reg .b32 gv_{r};" for r in names]
    for i in range(4):
        lines.append(f"mov.b32 gv_t{i}, {word(lo[4 * i : 4 * i + 4])};")
        lines.append(f"mov.b32 gv_t{4 + i}, {word(hi[4 * i : 4 * i + 4])};")
    for half in range(2):
        lines.append("mov.b32 gv_sel, $8;" if half == 0 else "shr.u32 gv_sel, $8, 16;")
        lines += [
            "and.b32 gv_s, gv_sel, 0x7777;",
            "shr.u32 gv_c, gv_sel, 1;",
            "and.b32 gv_c, gv_c, 0x4444;",
            "or.b32 gv_c, gv_c, 0x3210;",
            "prmt.b32 gv_la, gv_t0, gv_t1, gv_s;",
            "prmt.b32 gv_lb, gv_t2, gv_t3, gv_s;",
            "prmt.b32 gv_lo, gv_la, gv_lb, gv_c;",
            "prmt.b32 gv_la, gv_t4, gv_t5, gv_s;",
            "prmt.b32 gv_lb, gv_t6, gv_t7, gv_s;",
            "prmt.b32 gv_hi, gv_la, gv_lb, gv_c;",
        ]
        for pair, selector in ((0, "0x5140"), (1, "0x7362")):
            out = 4 * half + 2 * pair
            lines += [
                f"prmt.b32 gv_pr, gv_lo, gv_hi, {selector};",
                f"shl.b32 ${out}, gv_pr, 16;",
                f"and.b32 ${out + 1}, gv_pr, 0xFFFF0000;",
            ]
    lines.append("}")
    return "\n".join(lines)
