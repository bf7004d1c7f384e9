"""Shared test utilities: tolerance rules and input factories (import as ``from helpers import ...``)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastbert.ops import _common

# flash-attention's three-way rule: maxerr(ours, ref32) <= k * maxerr(reflp, ref32) + floor, with
# floor = 2 * (rounding of ref32 to the kernel's dtype) + FLOOR[dtype] (see assert_three_way)
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
K_OUT, K_GRAD = 2.0, 3.0

# elementwise / row ops: dtype -> (atol, rtol)
ATOL_RTOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


def assert_runs_identical(runs) -> None:
    """Every run (a sequence of tensors) equals the first one bit for bit."""
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            assert torch.equal(a, c)


def maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def assert_three_way(ours: torch.Tensor, ref32: torch.Tensor, reflp: torch.Tensor, *, grad: bool = False, name: str = "") -> None:
    """Assert the kernel is at most k times as far from the fp32 reference as the reference in its own dtype.

    The floor is the convention's: 2 * (rounding of ref32 to ours.dtype) + FLOOR[ours.dtype]. Pass ref32 in fp32 to
    get the rounding term (it matters in bf16, whose half-ulp passes FLOOR for |values| >= 2); a ref32 already
    rounded to ours.dtype makes the term 0.
    """
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    assert ours.shape == ref32.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref32.shape)}"
    k = K_GRAD if grad else K_OUT
    err, base = maxerr(ours, ref32), maxerr(reflp, ref32)
    floor = 2 * maxerr(ref32.to(ours.dtype), ref32) + FLOOR[ours.dtype]
    bound = k * base + floor
    assert err <= bound, f"{name}: maxerr {err:.3e} > {k} * {base:.3e} + floor {floor:.3e} = {bound:.3e}"


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


_AOT_SCRIPT = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
spec = json.loads(sys.argv[1])
kernel = getattr(importlib.import_module(spec["module"]), spec["kernel"])
signature = {}
for name in kernel.arg_names:
    if name in spec["constexprs"]:
        signature[name] = "constexpr"
    elif name in spec["pointers"]:
        signature[name] = "*" + spec["pointers"][name]
    else:
        signature[name] = "fp32" if name in spec["floats"] else "i32"
for cap in spec["capabilities"]:
    src = ASTSource(fn=kernel, signature=signature, constexprs=spec["constexprs"])
    triton.compile(src, target=GPUTarget("cuda", cap, 32),
                   options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
"""


def aot_compile_cuda(module: str, kernel: str, pointers: dict, constexprs: dict, *, floats=(), num_warps: int = 4,
                     num_stages: int = 3, capabilities=(90,)) -> None:
    """Compile a @triton.jit kernel for NVIDIA targets down to cubin without a GPU (Triton ships ptxas).

    The interpreter that runs kernels in CPU CI accepts code the compiler rejects (e.g. a plain-float global read
    inside a kernel), so this catches compile-only errors before a GPU machine does. Runs in a subprocess without
    TRITON_INTERPRET (the kernels must be real JITFunctions). ``pointers`` maps pointer arguments to Triton dtypes
    ("bf16", "fp32", "i64"); other non-constexpr arguments are i32, or fp32 when named in ``floats``.
    """
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
    spec = dict(module=module, kernel=kernel, pointers=pointers, constexprs=constexprs, floats=list(floats),
                num_warps=num_warps, num_stages=num_stages, capabilities=list(capabilities))
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, json.dumps(spec)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{module}.{kernel} does not compile for CUDA {capabilities}:\n{proc.stderr[-3000:]}"


# ----------------------------------------------------------------------------------------------------------------
# dropout keep-masks: rebuilt from the seed an op drew, with the kernels' own Philox helper
# ----------------------------------------------------------------------------------------------------------------

@triton.jit
def _keep_mask_kernel(SEED, KEEP, n_rows, n_cols, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col_start = tl.program_id(1) * BLOCK_N
    stream = tl.program_id(2)
    cols = col_start + tl.arange(0, BLOCK_N)
    keep = _common.dropout_keep(tl.load(SEED), rows, col_start, stream, threshold, BLOCK_N)
    offs = (stream.to(tl.int64) * n_rows + rows.to(tl.int64)[:, None]) * n_cols + cols[None, :]
    tl.store(KEEP + offs, keep.to(tl.int8), mask=(rows < n_rows)[:, None] & (cols < n_cols)[None, :])


def keep_mask(seed: torch.Tensor, streams: int, n_rows: int, n_cols: int, dropout_p: float) -> torch.Tensor:
    """bool [streams, n_rows, n_cols]: the keep decisions ``_common.dropout_keep`` makes for ``seed``."""
    keep = torch.zeros((streams, n_rows, n_cols), dtype=torch.int8, device=seed.device)
    if keep.numel():
        grid = (triton.cdiv(n_rows, 16), triton.cdiv(n_cols, 64), streams)
        _keep_mask_kernel[grid](seed, keep, n_rows, n_cols, _common.dropout_threshold(dropout_p), BLOCK_M=16, BLOCK_N=64)
    return keep.bool()


def seed_of_next_op(torch_seed: int, device) -> torch.Tensor:
    """The dropout seed tensor an op draws first after ``torch.manual_seed(torch_seed)`` (ops draw it before any
    other random number), so a test can rebuild the op's keep-mask."""
    torch.manual_seed(torch_seed)
    return _common.draw_seed(device)


def attention_with_keep_mask(q, k, v, *, dropout_p, torch_seed=1234, **kwargs):
    """(out, keep): ``fastbert.ops.attention`` and its bool keep-mask ``[batch, heads, S, S]`` (S = seqlen, or
    max_seqlen for packed, top-left aligned per sequence) — what ``attention_ref(..., dropout_mask=keep)`` takes."""
    from fastbert.ops import attention

    torch.manual_seed(torch_seed)
    out = attention(q, k, v, dropout_p=dropout_p, **kwargs)
    packed = kwargs.get("cu_seqlens") is not None
    batch = kwargs["cu_seqlens"].numel() - 1 if packed else q.shape[0]
    seqlen = kwargs["max_seqlen"] if packed else q.shape[1]
    heads = q.shape[-2]
    keep = keep_mask(seed_of_next_op(torch_seed, q.device), batch * heads, seqlen, seqlen, dropout_p)
    return out, keep.view(batch, heads, seqlen, seqlen)


def layer_norm_with_keep_mask(x, weight, bias, eps, residual, dropout_p, torch_seed=1234):
    """(y, keep): ``fastbert.ops.layer_norm`` and the bool keep-mask of x it used (None when dropout_p == 0)."""
    from fastbert.ops import layer_norm

    torch.manual_seed(torch_seed)
    y = layer_norm(x, weight, bias, eps, residual=residual, dropout_p=dropout_p)
    if dropout_p == 0.0:
        return y, None
    n = x.shape[-1]
    keep = keep_mask(seed_of_next_op(torch_seed, x.device), 1, x.numel() // n if n else 0, n, dropout_p)
    return y, keep.view(x.shape)


# ----------------------------------------------------------------------------------------------------------------
# tiny models and batches (conftest.py exposes them as the fixtures tiny_config, padded_batch, packed_batch)
# ----------------------------------------------------------------------------------------------------------------
TINY = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
PAD_MODES = ("none", "right", "left", "holes", "one_row_padded")


def tiny_config(**overrides):
    """A 2-layer, hidden-64 BertConfig without dropout (override any field)."""
    from fastbert import BertConfig

    return BertConfig(**{**TINY, **overrides})


def padded_batch(mode: str = "right", batch: int = 3, seqlen: int = 19, seed: int = 0, vocab: int = TINY["vocab_size"],
                 device="cpu") -> dict[str, torch.Tensor]:
    """input_ids (0 at padding), attention_mask and MLM labels (every 5th real token from position 2) of a padded
    batch whose mask follows ``mode`` (one of PAD_MODES; needs batch >= 3 except for "none")."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seqlen), generator=g)
    mask = torch.ones(batch, seqlen, dtype=torch.long)
    if mode == "right":
        mask[1, seqlen * 4 // 7:] = 0
        mask[2, 4:] = 0
    elif mode == "left":
        mask[1, :seqlen * 3 // 7] = 0
    elif mode == "holes":
        mask[1, 3:6] = 0
        mask[2, ::2] = 0
    elif mode == "one_row_padded":
        mask[0] = 0
        mask[2, 4:] = 0
    elif mode != "none":
        raise ValueError(f"unknown padding mode {mode!r}")
    ids = ids * mask
    labels = torch.full_like(ids, -100)
    labels[:, 2::5] = ids[:, 2::5]
    labels = labels.masked_fill(mask == 0, -100)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def packed_batch(padded: dict[str, torch.Tensor]) -> dict:
    """The packed (padding-free) form of a ``padded_batch``: input_ids / labels [total], cu_seqlens, max_seqlen."""
    from fastbert.ops.padding import padded_to_packed, seqlens_to_cu_seqlens

    mask = padded["attention_mask"]
    lengths = mask.sum(1)
    out = {k: padded_to_packed(v, mask) for k, v in padded.items() if k != "attention_mask"}
    out["cu_seqlens"] = seqlens_to_cu_seqlens(lengths)
    out["max_seqlen"] = int(lengths.max())
    return out


# ----------------------------------------------------------------------------------------------------------------
# a corpus and a config.json for the pretraining / fine-tuning CLIs
# ----------------------------------------------------------------------------------------------------------------
CLI_TINY_CONFIG = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
                   "max_position_embeddings": 64}


def write_cli_inputs(folder, config: dict | None = None):
    """(corpus.txt, tiny.json) written into folder: make_documents() as a text corpus and CLI_TINY_CONFIG."""
    import json

    text = folder / "corpus.txt"
    text.write_text("\n\n".join(make_documents()) + "\n", encoding="utf-8")
    path = folder / "tiny.json"
    path.write_text(json.dumps(config or CLI_TINY_CONFIG), encoding="utf-8")
    return text, path


def make_documents(n_docs=24, seed=0):
    """Documents of made-up sentences over a small vocabulary (a WordPiece vocab trains on it in milliseconds)."""
    import random

    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "bu", "da", "fe"]
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(150)})
    return [" ".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))).capitalize() + "."
                     for _ in range(rng.randint(4, 8))) for _ in range(n_docs)]
