"""Attention kernel benchmark: fastbert's fused op against naive eager attention, SDPA backends and FlexAttention.

Workload: q, k, v ``[batch, seqlen, heads=12, head_dim=64]`` with a right-padding mask, lengths either IMDb-like
(harness.imdb_like_lengths, truncated to seqlen) or full. Forward (no grad) and forward+backward (grads of q, k, v).
TFLOP/s uses the FlashAttention count, fwd = 4 * sum_i(L_i^2) * heads * head_dim and fwd+bwd = 3.5x that, on real
tokens (``tflops``) and on the padded shape (``tflops_padded``).

Providers (each guarded: one that cannot run here gets a row with the reason in ``note``):

* ``fastbert-padded`` ``fastbert.ops.attention`` with ``attention_mask``; ``fastbert-packed`` the same tokens packed
  with ``fastbert.ops.padding`` (``cu_seqlens``). Timed where the Triton kernels run compiled; elsewhere the note is
  the reason ``fastbert._backend.why_not_triton`` gives (``harness.require_fused``);
* ``eager`` HF's matmul/softmax attention, ``fastbert.ops.reference.eager_attention`` (the path table's "eager"
  entry), the 5x target's baseline;
* ``sdpa-efficient``, ``sdpa-cudnn``, ``sdpa-math``: ``fastbert.ops.reference.sdpa_attention`` (the "sdpa" entry,
  additive padding mask) pinned to each SDPA backend that accepts a mask;
* ``sdpa-flash-jagged``: torch SDPA's flash backend on the unpadded tokens as a jagged nested tensor (CUDA);
* ``flex``: compiled FlexAttention with a padding BlockMask (query and key padding, so it skips padded blocks; CUDA).

Timing, steps and guards: ``benchmarks/harness.py``. CUDA: bf16, batch {32, 128} x seqlen {128, 512} x lengths
{imdb, full}. CPU: a small fp32 smoke run of the torch providers.

    python benchmarks/run.py --only attention [--quick]     # or: python benchmarks/bench_attention.py
    pytest benchmarks/bench_attention.py                     # pytest-benchmark, small shapes
"""
from __future__ import annotations

import functools

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
        raise harness.Unavailable(f"no SDPA {name} backend in torch {torch.__version__}")
    return sdpa_kernel(backend)


_flex_compiled = None


def _make_case(provider: str, q, k, v, mask, lengths, device) -> harness.Case:
    """One provider on padded q, k, v [batch, seqlen, heads, head_dim] (packed providers differentiate their own
    packed copies of the same tokens)."""
    from fastbert.ops import padding, reference

    if provider.startswith("fastbert"):
        harness.require_fused(q)
        from fastbert.ops import attention

        if provider == "fastbert-padded":
            return harness.Case(lambda: attention(q, k, v, attention_mask=mask), (q, k, v))
        cu = padding.seqlens_to_cu_seqlens(lengths).to(device)
        max_seqlen = int(lengths.max())
        pq, pk, pv = (padding.padded_to_packed(t.detach(), mask).requires_grad_() for t in (q, k, v))
        return harness.Case(lambda: attention(pq, pk, pv, cu_seqlens=cu, max_seqlen=max_seqlen), (pq, pk, pv))
    if provider == "eager":
        return harness.Case(lambda: reference.eager_attention(q, k, v, attention_mask=mask), (q, k, v))
    if provider.startswith("sdpa-") and provider != "sdpa-flash-jagged":
        backend = provider.split("-", 1)[1]
        return harness.Case(lambda: reference.sdpa_attention(q, k, v, attention_mask=mask), (q, k, v),
                            lambda: _sdpa_backend(backend))
    if provider == "sdpa-flash-jagged":
        harness.require_cuda(device, "flash backend")
        offsets = padding.seqlens_to_cu_seqlens(lengths).to(device).long()
        values = tuple(padding.padded_to_packed(t.detach(), mask).requires_grad_() for t in (q, k, v))  # [T, H, D]

        def jagged():
            nq, nk, nv = (torch.nested.nested_tensor_from_jagged(t, offsets) for t in values)  # [B, j, H, D]
            out = torch.nn.functional.scaled_dot_product_attention(nq.transpose(1, 2), nk.transpose(1, 2), nv.transpose(1, 2))
            return out.transpose(1, 2).values()  # [T, H, D]

        return harness.Case(jagged, values, lambda: _sdpa_backend("flash"))
    if provider == "flex":
        harness.require_cuda(device, "compiled FlexAttention")
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        global _flex_compiled
        if _flex_compiled is None:
            _flex_compiled = torch.compile(flex_attention, dynamic=False)
        keep = mask.bool()

        def real_query_and_key(b, h, q_idx, kv_idx):
            return keep[b, q_idx] & keep[b, kv_idx]

        batch, seqlen = mask.shape
        block_mask = create_block_mask(real_query_and_key, batch, None, seqlen, seqlen, device=device)

        def flex():
            out = _flex_compiled(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)
            return out.transpose(1, 2)

        return harness.Case(flex, (q, k, v))
    raise ValueError(f"unknown provider {provider!r}")


def _inputs(batch: int, seqlen: int, kind: str, device: torch.device, dtype: torch.dtype):
    """-> q, k, v [batch, seqlen, HEADS, HEAD_DIM] (requiring grad), right-padding mask, lengths."""
    if kind == "imdb":
        lengths = harness.imdb_like_lengths(batch, seqlen, seed=seqlen)
    else:
        lengths = torch.full((batch,), seqlen, dtype=torch.long)
    mask = harness.lengths_to_mask(lengths, seqlen).to(device)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, seqlen, HEADS, HEAD_DIM, generator=g).to(device, dtype).requires_grad_()
               for _ in range(3))
    return q, k, v, mask, lengths


def _shapes(cuda: bool, quick: bool):
    if not cuda:
        return [(4, 128, "imdb")] if quick else [(4, 128, "imdb"), (4, 128, "full")]
    batches, seqlens = ((32,), (512,)) if quick else ((32, 128), (128, 512))
    kinds = ("imdb",) if quick else ("imdb", "full")
    return [(b, s, kind) for b in batches for s in seqlens for kind in kinds]


def run(device: torch.device | None = None, quick: bool = False) -> list[dict]:
    device = torch.device(device or harness.default_device())
    dtype = harness.bench_dtype(device)
    rows: list[dict] = []
    for batch, seqlen, kind in _shapes(device.type == "cuda", quick):
        q, k, v, mask, lengths = _inputs(batch, seqlen, kind, device, dtype)
        padded = torch.full((batch,), seqlen, dtype=torch.long)
        for provider in PROVIDERS:
            for mode in ("fwd", "fwd+bwd"):
                row = {"bench": "attention", "provider": provider, "mode": mode,
                       "shape": f"{batch}x{seqlen}x{HEADS}x{HEAD_DIM}", "lengths": kind,
                       "real_tokens": int(lengths.sum()), "dtype": harness.dtype_name(dtype)}
                if kind == "imdb" and batch == 32:  # the plotted series: the target shape vs seqlen
                    row["max_len"] = seqlen
                rows.append(row)
                with harness.noted(row):
                    case = _make_case(provider, q, k, v, mask, lengths, device)
                    t = harness.time_op(case, mode, device, warmup_ms=100, rep_ms=500, cpu_rep_ms=200, memory=True)
                    seconds = t["ms"] * 1e-3
                    row.update(t)
                    row["tflops"] = attention_flops(lengths, HEADS, HEAD_DIM, mode) / seconds / 1e12
                    row["tflops_padded"] = attention_flops(padded, HEADS, HEAD_DIM, mode) / seconds / 1e12
                harness.release(device)
    harness.add_speedups(rows, "eager", group=("shape", "lengths", "mode"))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# pytest-benchmark entry points (small shapes; `pytest benchmarks/bench_attention.py`)
# ----------------------------------------------------------------------------------------------------------------
def _small_case(provider: str, device: torch.device) -> harness.Case:
    cuda = device.type == "cuda"
    batch, seqlen = (32, 512) if cuda else (2, 64)
    q, k, v, mask, lengths = _inputs(batch, seqlen, "imdb", device, harness.bench_dtype(device))
    return _make_case(provider, q, k, v, mask, lengths, device)


pytest_generate_tests = harness.pytest_cases("provider, mode", [
    ("eager", "fwd"), ("eager", "fwd+bwd"), ("fastbert-padded", "fwd"), ("fastbert-padded", "fwd+bwd"),
    ("fastbert-packed", "fwd+bwd")])


def test_attention(benchmark, provider, mode):
    harness.pytest_benchmark(benchmark, functools.partial(_small_case, provider), mode)


def main() -> None:
    harness.script_main(run, COLUMNS, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
