"""Programmatic dependent launch off a card: the launch structs match the CUDA driver's ABI
(a wrong offset would hand cuLaunchKernelEx garbage on the first served token), and nothing
asks for PDL where it cannot run."""

from __future__ import annotations

import ctypes

import torch

from app.engine.kernels import pdl


def test_launch_structs_have_the_driver_layout():
    # CUlaunchAttribute: a 4-byte id padded to 8, then a 64-byte union; CUlaunchConfig: seven
    # uints, the stream pointer at 32, the attribute pointer at 40, their count at 48.
    assert ctypes.sizeof(pdl._Attribute) == 72
    assert pdl._Attribute.value.offset == 8
    assert ctypes.sizeof(pdl._Config) == 56
    assert (pdl._Config.stream.offset, pdl._Config.attrs.offset) == (32, 40)
    assert pdl._Config.attr_count.offset == 48


def test_no_pdl_off_a_card_even_when_enabled(monkeypatch):
    monkeypatch.setattr(pdl, "ENABLED", True)
    cpu = torch.device("cpu")
    assert not pdl.runs(cpu)
    assert pdl.triton_options(cpu, 1) == {"PDL": False}  # no launch_pdl for the interpreter


def test_only_one_row_steps_chain_on_a_card(monkeypatch):
    monkeypatch.setattr(pdl, "runs", lambda device: True)
    card = torch.device("cuda", 0)
    assert pdl.triton_options(card, 1) == {"PDL": True, "launch_pdl": True}
    assert pdl.triton_options(card, 32) == {"PDL": False}  # the rows kernels do not wait early
