"""End-to-end encoder benchmark: BertModel forward and forward+backward per attention backend, against Hugging Face.

Workload: a variable-length batch whose lengths follow IMDb reviews under WordPiece (see harness.imdb_like_lengths),
padded to the batch's max length as a DataLoader would. Figures are counted on real (non-padding) tokens.

CUDA: BERT-base, bf16 (forward: bf16 weights under no_grad; forward+backward: fp32 weights under bf16 autocast),
batch 32, max length 128 and 512. CPU: a MiniLM-sized model in fp32 at batch 8 (a smoke-scale run: the Triton
"fused" path needs CUDA and is reported as skipped there).
"""
from __future__ import annotations

import argparse
import contextlib

import torch

try:
    from . import harness
except ImportError:  # run as a script
    import harness

COLUMNS = ["provider", "mode", "shape", "real_tokens", "ms", "ms_p20", "ms_p80", "real_tokens_per_s",
           "peak_mem_mb", "speedup_vs_fastbert-eager", "note"]

CONFIGS = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "mini": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}


def _providers(device: torch.device) -> list[str]:
    names = ["fastbert-eager", "fastbert-sdpa", "fastbert-fused"]
    try:
        import transformers  # noqa: F401

        names += ["hf-eager", "hf-sdpa"]
    except ImportError:
        pass
    return names


def _build(provider: str, config_kwargs: dict, device: torch.device, state_dict=None):
    import fastbert

    family, impl = provider.split("-", 1)
    if family == "fastbert":
        model = fastbert.BertModel(fastbert.BertConfig(**config_kwargs, attn_implementation=impl))
        model.check_inputs = False  # the benchmark feeds valid inputs; keep the validation sync out of the timing
    else:
        import transformers

        model = transformers.BertModel(fastbert.BertConfig(**config_kwargs).to_hf(attn_implementation=impl))
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.to(device)


def run(device: torch.device | None = None, quick: bool = False, model: str | None = None,
        batch: int | None = None, max_lens: tuple[int, ...] | None = None) -> list[dict]:
    from tqdm import tqdm

    device = torch.device(device or harness.default_device())
    cuda = device.type == "cuda"
    model = model or ("base" if cuda else "mini")
    batch = batch or (32 if cuda else 8)
    max_lens = max_lens or ((128, 512) if cuda else ((128,) if quick else (128, 512)))
    dtype = torch.bfloat16 if cuda else torch.float32
    config_kwargs = CONFIGS[model]
    rows: list[dict] = []
    reference_weights = None
    cases = [(p, m, L) for L in max_lens for p in _providers(device) for m in ("fwd", "fwd+bwd")]
    for provider, mode, max_len in tqdm(cases, desc="bench_bert", leave=False):
        lengths = harness.imdb_like_lengths(batch, max_len, seed=max_len)
        seqlen = int(lengths.max())
        mask = harness.lengths_to_mask(lengths, seqlen).to(device)
        g = torch.Generator().manual_seed(1)
        ids = (torch.randint(1000, 30000, (batch, seqlen), generator=g).to(device) * mask)
        row = {"bench": "bert", "provider": provider, "mode": mode, "shape": f"{model} {batch}x{seqlen}", "max_len": max_len,
               "real_tokens": int(lengths.sum()), "dtype": str(dtype).replace("torch.", "")}
        rows.append(row)
        if provider == "fastbert-fused" and not cuda:
            row["note"] = "needs CUDA (Triton kernels)"
            continue
        net = _build(provider, config_kwargs, device, reference_weights)
        if reference_weights is None:
            reference_weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        if mode == "fwd":
            net = net.eval().to(dtype)

            def step():
                with torch.no_grad():
                    net(input_ids=ids, attention_mask=mask)
        else:
            net = net.train()
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

            def step():
                with autocast:
                    out = net(input_ids=ids, attention_mask=mask)[0]
                out.float().square().mean().backward()
        t = harness.bench_fn(step, device, warmup_ms=200 if cuda else 0, rep_ms=1000 if cuda else 300)
        row.update(t)
        row["real_tokens_per_s"] = row["real_tokens"] / (t["ms"] / 1e3)
        row["peak_mem_mb"] = harness.peak_memory_mb(step, device)
        del net
        if cuda:
            torch.cuda.empty_cache()
    harness.add_speedups(rows, "fastbert-eager")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", choices=sorted(CONFIGS))
    parser.add_argument("--batch", type=int)
    args = parser.parse_args()
    rows = run(quick=args.quick, model=args.model, batch=args.batch)
    print(harness.format_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
