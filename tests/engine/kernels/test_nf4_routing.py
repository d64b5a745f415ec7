"""Which NF4 kernels serve: the fastest routing whose repacked copies fit the card."""

from __future__ import annotations

import bitsandbytes as bnb
import torch

from app.engine.kernels.nf4_routing import HEADROOM_BYTES, kernel_for_memory, packed_bytes

GIB = 2**30
FALCON_7B_PACKED = int(3.45 * GIB)  # its 4-bit projections as stored


def test_the_kernels_whose_copies_fit_are_chosen_and_the_headroom_stays() -> None:
    assert kernel_for_memory(130 * GIB, FALCON_7B_PACKED) == "mma"  # H200 after loading
    assert kernel_for_memory(9 * GIB, FALCON_7B_PACKED) == "mma"  # its one copy + headroom
    assert kernel_for_memory(7 * GIB, FALCON_7B_PACKED) == "bnb_flat"  # the copy would eat it
    assert kernel_for_memory(6 * GIB, FALCON_7B_PACKED) == "bnb_flat"  # none fits
    assert kernel_for_memory(HEADROOM_BYTES, 1) == "bnb_flat"  # never eats the headroom


def test_packed_bytes_counts_the_stored_nibbles() -> None:
    model = torch.nn.Sequential(
        bnb.nn.Linear4bit(128, 64, bias=False, quant_type="nf4"), torch.nn.Linear(64, 8)
    )
    model[0].weight = bnb.nn.Params4bit(
        torch.randn(64, 128), requires_grad=False, quant_type="nf4"
    ).to("cpu")
    assert packed_bytes(model) == 64 * 128 // 2  # two weights a byte; the plain Linear is not


def test_an_unknown_kernel_setting_says_which_are_allowed(monkeypatch) -> None:  # noqa: ANN001
    from pydantic import ValidationError

    from app.config import Settings

    monkeypatch.setenv("TELLER_NF4_KERNELS", "fastest")
    try:
        Settings()
    except ValidationError as exc:
        message = str(exc)
    else:
        raise AssertionError("TELLER_NF4_KERNELS=fastest was accepted")
    assert "nf4_kernels" in message and "'mma'" in message and "'auto'" in message
    monkeypatch.setenv("TELLER_NF4_KERNELS", "mma")
    assert Settings().nf4_kernels == "mma"
