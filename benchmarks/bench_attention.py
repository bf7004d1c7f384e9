"""Attention kernel benchmark: fastbert's fused op against naive eager attention, SDPA backends and FlexAttention.

Workload: q, k, v ``[batch, seqlen, heads=12, head_dim=64]`` with a right-padding mask, lengths either IMDb-like
(harness.imdb_like_lengths, truncated to seqlen) or full. Forward (no grad) and forward+backward (grads of q, k, v).
TFLOP/s uses the FlashAttention count, fwd = 4 * sum_i(L_i^2) * heads * head_dim and fwd+bwd = 3.5x that, on real
tokens (``tflops``) and on the padded shape (``tflops_padded``).

Providers (each guarded: one that cannot run here gets a row with the reason in ``note``):

* ``fastbert-padded`` ``fastbert.ops.attention`` with ``attention_mask``; ``fastbert-packed`` the same tokens packed,
  with ``cu_seqlens``;
* ``eager`` HF's matmul/softmax attention (``reference.eager_attention``), the 5x target's baseline;
* ``sdpa-efficient``, ``sdpa-cudnn``, ``sdpa-math``: ``reference.sdpa_attention`` (additive padding mask) pinned to
  each SDPA backend that accepts a mask;
* ``sdpa-flash-jagged``: SDPA's flash backend on the unpadded tokens as a jagged nested tensor;
* ``flex``: compiled FlexAttention with a padding BlockMask (query and key padding, so it skips padded blocks).

CUDA: bf16, batch {32, 128} x seqlen {128, 512} x lengths {imdb, full}. CPU: a small fp32 smoke run of the torch
providers (the Triton providers need CUDA: the interpreter is not a speed path).
"""
from __future__ import annotations

import contextlib

import torch

try:
    from . import harness
except ImportError:  # run as a script or collected by pytest from this folder
    import harness

COLUMNS = ["provider", "mode", "shape", "lengths", "ms", "ms_p20", "ms_p80", "tflops", "tflops_padded",
           "peak_mem_mb", "speedup_vs_eager", "note"]

HEADS, HEAD_DIM = 12, 64
PROVIDERS = ["fastbert-padded", "fastbert-packed", "eager", "sdpa-efficient", "sdpa-cudnn", "sdpa-math",
             "sdpa-flash-jagged", "flex"]


def attention_flops(lengths: torch.Tensor, heads: int, head_dim: int, mode: str) -> float:
    """FlashAttention convention: two matmuls of 2 * L^2 * d per head forward, backward 2.5x forward."""
    fwd = 4.0 * float((lengths.double() ** 2).sum()) * heads * head_dim
    return fwd if mode == "fwd" else 3.5 * fwd


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None),
               "math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}[name]
    if backend is None:
        raise Unavailable(f"no SDPA {name} backend in torch {torch.__version__}")
    return sdpa_kernel(backend)


_flex_compiled = None


class Unavailable(RuntimeError):
    """A provider that cannot run on this device or torch build (reported in the row's note)."""


def _make_provider(provider: str, q, k, v, mask, lengths, device):
    """-> (fn(q, k, v) -> out, (q, k, v) inputs to differentiate, a context manager) for one provider."""
    from fastbert.ops import padding, reference

    cuda = device.type == "cuda"
    if provider.startswith("fastbert"):
        if not cuda:
            raise Unavailable("needs CUDA (Triton kernels)")
        from fastbert.ops import attention

        if provider == "fastbert-padded":
            return (lambda q, k, v: attention(q, k, v, attention_mask=mask)), (q, k, v), contextlib.nullcontext
        cu = padding.seqlens_to_cu_seqlens(lengths).to(device)
        max_seqlen = int(lengths.max())
        packed = [padding.padded_to_packed(t.detach(), mask).requires_grad_() for t in (q, k, v)]
        return (lambda q, k, v: attention(q, k, v, cu_seqlens=cu, max_seqlen=max_seqlen)), packed, contextlib.nullcontext
    if provider == "eager":
        return (lambda q, k, v: reference.eager_attention(q, k, v, attention_mask=mask)), (q, k, v), contextlib.nullcontext
    if provider.startswith("sdpa-") and provider != "sdpa-flash-jagged":
        backend = provider.split("-", 1)[1]
        return ((lambda q, k, v: reference.sdpa_attention(q, k, v, attention_mask=mask)), (q, k, v),
                lambda: _sdpa_backend(backend))
    if provider == "sdpa-flash-jagged":
        if not cuda:
            raise Unavailable("needs CUDA (flash backend)")
        offsets = padding.seqlens_to_cu_seqlens(lengths).to(device).long()
        values = [padding.padded_to_packed(t.detach(), mask).requires_grad_() for t in (q, k, v)]  # [T, H, D]

        def jagged(q, k, v):
            nq, nk, nv = (torch.nested.nested_tensor_from_jagged(t, offsets) for t in (q, k, v))  # [B, j, H, D]
            out = torch.nn.functional.scaled_dot_product_attention(nq.transpose(1, 2), nk.transpose(1, 2), nv.transpose(1, 2))
            return out.transpose(1, 2).values()  # [T, H, D]

        return jagged, values, lambda: _sdpa_backend("flash")
    if provider == "flex":
        if not cuda:
            raise Unavailable("needs CUDA (compiled FlexAttention)")
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        global _flex_compiled
        if _flex_compiled is None:
            _flex_compiled = torch.compile(flex_attention, dynamic=False)
        keep = mask.bool()

        def padding(b, h, q_idx, kv_idx):
            return keep[b, q_idx] & keep[b, kv_idx]

        batch, seqlen = mask.shape
        block_mask = create_block_mask(padding, batch, None, seqlen, seqlen, device=device)

        def flex(q, k, v):
            out = _flex_compiled(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)
            return out.transpose(1, 2)

        return flex, (q, k, v), contextlib.nullcontext
    raise ValueError(f"unknown provider {provider!r}")


def _shapes(cuda: bool, quick: bool):
    if not cuda:
        return [(4, 128, "imdb")] if quick else [(4, 128, "imdb"), (4, 128, "full")]
    batches, seqlens = ((32,), (512,)) if quick else ((32, 128), (128, 512))
    kinds = ("imdb",) if quick else ("imdb", "full")
    return [(b, s, kind) for b in batches for s in seqlens for kind in kinds]


def run(device: torch.device | None = None, quick: bool = False) -> list[dict]:
    device = torch.device(device or harness.default_device())
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    rows: list[dict] = []
    for batch, seqlen, kind in _shapes(cuda, quick):
        if kind == "imdb":
            lengths = harness.imdb_like_lengths(batch, seqlen, seed=seqlen)
        else:
            lengths = torch.full((batch,), seqlen, dtype=torch.long)
        mask = harness.lengths_to_mask(lengths, seqlen).to(device)
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(batch, seqlen, HEADS, HEAD_DIM, generator=g).to(device, dtype).requires_grad_()
                   for _ in range(3))
        for provider in PROVIDERS:
            for mode in ("fwd", "fwd+bwd"):
                row = {"bench": "attention", "provider": provider, "mode": mode,
                       "shape": f"{batch}x{seqlen}x{HEADS}x{HEAD_DIM}", "lengths": kind,
                       "real_tokens": int(lengths.sum()), "dtype": str(dtype).replace("torch.", "")}
                if kind == "imdb" and batch == 32:  # the plotted series: the target shape vs seqlen
                    row["max_len"] = seqlen
                rows.append(row)
                try:
                    _measure(row, provider, mode, q, k, v, mask, lengths, device, batch, seqlen)
                except Unavailable as exc:
                    row["note"] = str(exc)
                except Exception as exc:  # a backend that rejects this input (e.g. SDPA: "No viable backend")
                    first_line = (str(exc).splitlines() or [""])[0]
                    row["note"] = f"{type(exc).__name__}: {first_line[:70]}"
                if "note" in row:
                    for key in ("ms", "ms_p20", "ms_p80", "tflops", "tflops_padded", "peak_mem_mb"):
                        row.pop(key, None)
                if cuda:
                    torch.cuda.empty_cache()
    harness.add_speedups(rows, "eager", group=("shape", "lengths", "mode"))
    return rows


def _measure(row, provider, mode, q, k, v, mask, lengths, device, batch, seqlen):
    cuda = device.type == "cuda"
    fn, inputs, ctx = _make_provider(provider, q, k, v, mask, lengths, device)
    with ctx():
        with torch.no_grad():
            out = fn(*inputs)  # also the first call: compiles / autotunes outside the timing
        dout = torch.randn_like(out)
        if mode == "fwd":
            def step():
                with torch.no_grad():
                    fn(*inputs)
        else:
            def step():
                torch.autograd.grad(fn(*inputs), inputs, dout)
        step()
        t = harness.bench_fn(step, device, warmup_ms=100 if cuda else 0, rep_ms=500 if cuda else 200)
        row.update(t)
        row["tflops"] = attention_flops(lengths, HEADS, HEAD_DIM, mode) / (t["ms"] * 1e-3) / 1e12
        padded = torch.full((batch,), seqlen, dtype=torch.long)
        row["tflops_padded"] = attention_flops(padded, HEADS, HEAD_DIM, mode) / (t["ms"] * 1e-3) / 1e12
        row["peak_mem_mb"] = harness.peak_memory_mb(step, device)


# ----------------------------------------------------------------------------------------------------------------
# pytest-benchmark entry points (small shapes; the fastbert ones need CUDA)
# ----------------------------------------------------------------------------------------------------------------
def _bench_case(benchmark, provider, mode):
    import pytest

    device = harness.default_device()
    if provider.startswith("fastbert") and device.type != "cuda":
        pytest.skip("fastbert's Triton kernels are timed on CUDA only (the interpreter is not a speed path)")
    batch, seqlen = (32, 512) if device.type == "cuda" else (2, 64)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lengths = harness.imdb_like_lengths(batch, seqlen, seed=seqlen)
    mask = harness.lengths_to_mask(lengths, seqlen).to(device)
    q, k, v = (torch.randn(batch, seqlen, HEADS, HEAD_DIM, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    fn, inputs, ctx = _make_provider(provider, q, k, v, mask, lengths, device)
    with ctx():
        dout = torch.randn_like(fn(*inputs))

        def step():
            if mode == "fwd":
                with torch.no_grad():
                    fn(*inputs)
            else:
                torch.autograd.grad(fn(*inputs), inputs, dout)
            if device.type == "cuda":
                torch.cuda.synchronize()

        benchmark(step)


def test_attention_eager_fwd(benchmark):
    _bench_case(benchmark, "eager", "fwd")


def test_attention_eager_fwd_bwd(benchmark):
    _bench_case(benchmark, "eager", "fwd+bwd")


def test_attention_fastbert_padded_fwd(benchmark):
    _bench_case(benchmark, "fastbert-padded", "fwd")


def test_attention_fastbert_padded_fwd_bwd(benchmark):
    _bench_case(benchmark, "fastbert-padded", "fwd+bwd")


def test_attention_fastbert_packed_fwd_bwd(benchmark):
    _bench_case(benchmark, "fastbert-packed", "fwd+bwd")


def main() -> None:
    harness.script_main(run, COLUMNS, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
