"""Tests for rgtp.flops.MacCounter (method §10.1 conventions, §10.2 closed forms)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rgtp.flops import PAPER_SCOPES, MacCounter, scope
from rgtp.models.layers import Block

DEVICES = ["cpu", "meta"]


def _count(fn, *args) -> int:
    with MacCounter() as c:
        fn(*args)
    return c.macs(None)


def _t(*shape: int, device: str = "cpu") -> torch.Tensor:
    return torch.randn(*shape, device=device)


# -------------------------------------------------------------------------------------------------------- products


@pytest.mark.parametrize("device", DEVICES)
def test_linear_counts_macs_plus_bias(device: str) -> None:
    lin = nn.Linear(5, 7).to(device)
    assert _count(lin, _t(2, 3, 5, device=device)) == 2 * 3 * 5 * 7 + 2 * 3 * 7
    assert _count(lin, _t(4, 5, device=device)) == 4 * 5 * 7 + 4 * 7
    no_bias = nn.Linear(5, 7, bias=False).to(device)
    assert _count(no_bias, _t(2, 3, 5, device=device)) == 2 * 3 * 5 * 7


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_bmm_einsum(device: str) -> None:
    assert _count(torch.matmul, _t(3, 4, device=device), _t(4, 5, device=device)) == 3 * 4 * 5
    assert _count(torch.bmm, _t(2, 3, 4, device=device), _t(2, 4, 5, device=device)) == 2 * 3 * 4 * 5
    assert _count(torch.matmul, _t(2, 3, 4, 5, device=device), _t(2, 3, 5, 6, device=device)) == 2 * 3 * 4 * 6 * 5
    a, b = _t(2, 3, 4, device=device), _t(2, 4, 5, device=device)
    assert _count(lambda: torch.einsum("bij,bjk->bik", a, b)) == 2 * 3 * 4 * 5
    # the relative-position einsum shape: MACs = all dims of the contraction
    q, r = _t(2, 3, 4, 5, 6, device=device), _t(4, 7, 6, device=device)
    assert _count(lambda: torch.einsum("bhyxd,ykd->bhyxk", q, r)) == 2 * 3 * 4 * 5 * 7 * 6


def test_addmm_counts_product_and_addition() -> None:
    assert _count(torch.addmm, _t(3, 5), _t(3, 4), _t(4, 5)) == 3 * 4 * 5 + 3 * 5


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa_counted_per_head(device: str) -> None:
    b, h, lq, lk, d = 2, 3, 5, 7, 4
    q, k, v = _t(b, h, lq, d, device=device), _t(b, h, lk, d, device=device), _t(b, h, lk, d, device=device)
    assert _count(F.scaled_dot_product_attention, q, k, v) == b * h * 2 * lq * lk * d


def test_sdpa_equals_explicit_attention_matmuls() -> None:
    # In MACs (torch's FlopCounterMode counts 2 FLOPs per MAC): q kᵀ plus P v.
    q, k, v = _t(1, 2, 6, 8), _t(1, 2, 6, 8), _t(1, 2, 6, 8)
    ours = _count(F.scaled_dot_product_attention, q, k, v)
    assert ours == 2 * 2 * 6 * 6 * 8
    assert ours == _count(lambda: q @ k.transpose(-2, -1)) + _count(lambda: torch.ones(1, 2, 6, 6) @ v)


@pytest.mark.parametrize("device", DEVICES)
def test_conv2d_conv3d(device: str) -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1).to(device)
    out = 2 * 4 * 5 * 5
    assert _count(conv, _t(2, 3, 5, 5, device=device)) == out * 3 * 9 + out
    grouped = nn.Conv2d(4, 6, 3, stride=2, groups=2, bias=False).to(device)
    assert _count(grouped, _t(1, 4, 7, 7, device=device)) == (6 * 3 * 3) * 2 * 9
    conv3 = nn.Conv3d(3, 8, (2, 4, 4), stride=(2, 4, 4)).to(device)
    out3 = 8 * 2 * 2 * 2
    assert _count(conv3, _t(1, 3, 4, 8, 8, device=device)) == out3 * 3 * 32 + out3


def test_conv_transpose2d() -> None:
    convt = nn.ConvTranspose2d(4, 6, 2, stride=2)
    # every input element meets every output channel at every kernel tap; bias per output element
    assert _count(convt, _t(1, 4, 3, 3)) == (4 * 3 * 3) * 6 * 4 + 6 * 6 * 6


# ------------------------------------------------------------------------------------------------------- additions


@pytest.mark.parametrize("device", DEVICES)
def test_tensor_additions_counted(device: str) -> None:
    x, y = _t(3, 4, device=device), _t(3, 4, device=device)
    assert _count(torch.add, x, y) == 12
    assert _count(torch.add, x, _t(4, device=device)) == 12  # broadcast: one per output element
    assert _count(torch.add, _t(4, device=device), x) == 12

    def inplace() -> None:
        z = x.clone()
        z += y

    assert _count(inplace) == 12


def test_scalar_and_integer_additions_not_counted() -> None:
    x = _t(3, 4)
    assert _count(lambda: x + 1.0) == 0
    assert _count(lambda: x + torch.tensor(2.0)) == 0
    assert _count(lambda: torch.arange(10) + torch.arange(10)) == 0
    assert _count(lambda: torch.arange(10)[:, None] * 4 + torch.arange(10)[None, :]) == 0
    assert _count(lambda: x * x) == 0  # elementwise products are not products of matrices
    assert _count(lambda: x.softmax(-1)) == 0


# ---------------------------------------------------------------------------------------------------------- scopes


def test_scope_attribution_and_paper_scopes() -> None:
    assert set(PAPER_SCOPES) == {"backbone", "rgtp"}
    a, b = _t(2, 3), _t(3, 4)  # 24 MACs per product
    with MacCounter() as c:
        a @ b  # default scope: backbone
        with scope("rgtp"):
            a @ b
            a @ b
        with scope("embed"):
            a @ b
        with scope("neck"):
            a @ b
        with scope("head"):
            a @ b
    assert c.by_scope() == {"backbone": 24, "rgtp": 48, "embed": 24, "neck": 24, "head": 24}
    assert c.macs() == 72
    assert c.macs(None) == 144
    assert c.macs(("embed", "head")) == 48
    assert c.gmacs() == pytest.approx(72e-9)
    c.clear()
    assert c.macs(None) == 0


def test_nested_scopes_restore_outer() -> None:
    a, b = _t(2, 3), _t(3, 4)
    with MacCounter() as c:
        with scope("rgtp"):
            a @ b
            with scope("head"):
                a @ b
                a @ b
            a @ b  # back in rgtp
        a @ b  # back in the default scope
    assert c.by_scope() == {"rgtp": 48, "head": 48, "backbone": 24}


def test_scope_outside_counter_is_harmless() -> None:
    with scope("neck"):
        y = _t(2, 3) @ _t(3, 4)
    assert y.shape == (2, 4)
    with MacCounter() as c:
        _t(2, 3) @ _t(3, 4)
    assert c.by_scope() == {"backbone": 24}


# ---------------------------------------------------------------------------------------------------------- golden


def _block_macs(window: int, rel_pos_size: int, g: int) -> int:
    with torch.device("meta"):
        blk = Block(768, 12, 4.0, window_size=window, rel_pos_size=rel_pos_size)
        x = torch.empty(1, g * g, 768)
    with MacCounter() as c:
        y = blk(x, (g, g))
    assert y.shape == (1, g * g, 768)
    return c.macs(None)


def test_golden_vitdet_global_block() -> None:
    g, d = 42, 768
    n = g * g
    want = 12 * n * d * d + 9 * n * d + 2 * n * d + 2 * n * n * d + d * n * 2 * g + 2 * 12 * n * n
    assert _block_macs(0, 64, g) == want


def test_golden_vitdet_windowed_block() -> None:
    g, d = 42, 768
    n = g * g
    want = 12 * n * d * d + 11 * n * d + 2 * 9 * 196**2 * d + 9 * d * 196 * 28 + 2 * 12 * 9 * 196**2
    assert _block_macs(14, 14, g) == want
