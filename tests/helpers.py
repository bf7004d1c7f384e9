"""Shared test utilities: tolerance rules and input factories (import as ``from helpers import ...``)."""
from __future__ import annotations

import torch

# flash-attention's three-way rule: maxerr(ours, ref32) <= k * maxerr(reflp, ref32) + floor[dtype]
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
K_OUT, K_GRAD = 2.0, 3.0

# elementwise / row ops: dtype -> (atol, rtol)
ATOL_RTOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


def maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def assert_three_way(ours: torch.Tensor, ref32: torch.Tensor, reflp: torch.Tensor, *, grad: bool = False, name: str = "") -> None:
    """Assert the kernel is at most k times as far from the fp32 reference as the reference in its own dtype."""
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    assert ours.shape == ref32.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref32.shape)}"
    k = K_GRAD if grad else K_OUT
    err, base = maxerr(ours, ref32), maxerr(reflp, ref32)
    bound = k * base + FLOOR[ours.dtype]
    assert err <= bound, f"{name}: maxerr {err:.3e} > {k} * {base:.3e} + {FLOOR[ours.dtype]:.0e} = {bound:.3e}"


def make_attention_mask(batch: int, seqlen: int, mode: str, device="cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """HF-style int64 0/1 mask [batch, seqlen]: "none" (all ones), "random" (random right-padding lengths >= 1),
    "one_row_padded" (random lengths with row 0 fully padded)."""
    if mode == "none":
        return torch.ones(batch, seqlen, dtype=torch.long, device=device)
    lengths = torch.randint(1, seqlen + 1, (batch,), generator=generator)
    if mode == "one_row_padded":
        lengths[0] = 0
    elif mode != "random":
        raise ValueError(f"unknown padding mode {mode!r}")
    return (torch.arange(seqlen)[None, :] < lengths[:, None]).long().to(device)
