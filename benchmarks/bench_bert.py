"""End-to-end benchmarks: the encoder per backend, and the BERT pretraining step, against Hugging Face.

Part 1 ("encoder"): BertModel forward and forward+backward per attention backend and HF's BertModel.
Part 2 ("pretrain"): one BertForPreTraining training step (MLM + NSP loss, backward, AdamW step; bf16 autocast on
CUDA) for fastbert's fused padding-free path (padded batch unpadded inside, and the collator's packed batch), the
eager/sdpa paths and HF's BertForPreTraining eager/sdpa (+ torch.compile on CUDA); real tokens/s and MFU counted
on real tokens. Part 3 ("unpad sweep"): padded vs internally unpadded forward at several padding fractions on the
path "auto" picks here, the measurement behind ``fastbert.ops.dispatch.UNPAD_MIN_PADDING``.

Policy and baselines: a ``fastbert-<impl>`` provider is ``BertConfig(attn_implementation=impl)``, and what that runs
is ``fastbert.ops.choose_path(impl, device)``'s answer, asked through ``harness.fastbert_path``: a "fused" path whose
Triton kernels cannot run compiled here is reported as skipped with ``fastbert._backend.why_not_triton``'s reason.
Whether a padded batch runs padding-free is the model's own ``Path.unpads`` rule (``model.unpad``); the rows say
when it does. The peers are transformers' BertModel / BertForPreTraining (eager, sdpa, torch.compile) with the same
weights. Packed batches are built with ``fastbert.ops.padding``; timing in ``benchmarks/harness.py``.

Workload: a variable-length batch whose lengths follow IMDb reviews under WordPiece (see harness.imdb_like_lengths),
padded to the batch's max length as a DataLoader would. Figures are counted on real (non-padding) tokens.

CUDA: BERT-base, bf16 (forward: bf16 weights under no_grad; forward+backward: fp32 weights under bf16 autocast),
batch 32, max length 128 and 512. CPU: a MiniLM-sized model in fp32 at batch 8 (a smoke-scale run).
"""
from __future__ import annotations

import argparse
import contextlib

import torch

try:
    from . import harness
except ImportError:  # run as a script
    import harness

COLUMNS = ["part", "provider", "mode", "shape", "real_tokens", "ms", "ms_p20", "ms_p80", "real_tokens_per_s",
           "mfu", "peak_mem_mb", "speedup_vs_fastbert-eager", "speedup_vs_hf-sdpa", "note"]

# dense bf16 tensor-core peak (FLOP/s) by device name, for MFU; None where unknown (CPU)
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def peak_flops(device: torch.device) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def pretrain_flops(config: dict, lengths: torch.Tensor, mlm_fraction: float = 0.15, vocab: int = 30522) -> float:
    """Model FLOPs of one training step on the real tokens only (3x forward): the six per-layer GEMMs, attention
    (QK^T and PV over each sequence's own length), pooler/NSP and the MLM head at the masked positions."""
    c, i, n_layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    tokens = float(lengths.sum())
    gemm = 2.0 * (4 * c * c + 2 * c * i) * n_layers * tokens
    attn = 4.0 * c * n_layers * float((lengths.double() ** 2).sum())
    head = 2.0 * (c * c + c * vocab) * mlm_fraction * tokens + 2.0 * (c * c + 2 * c) * lengths.numel()
    return 3.0 * (gemm + attn + head)

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


def _note_unpadding(row: dict, net, mask: torch.Tensor) -> None:
    """Say in the row when a fastbert model runs this padded batch padding-free: its own rule decides
    (``Path.unpads`` with ``model.unpad``), asked here with the same arguments."""
    bert = getattr(net, "bert", net)
    if row["provider"].startswith("fastbert") and bert.path.unpads(int(mask.sum()), mask.numel(), bert.unpad):
        row["note"] = f"unpadded inside ({bert.path.name} path rule)"


def _build(provider: str, config_kwargs: dict, device: torch.device, ids: torch.Tensor, state_dict=None):
    """The model of ``provider``; raises harness.Unavailable for a fastbert path that cannot be timed here."""
    import fastbert

    family, impl = provider.split("-", 1)
    if family == "fastbert":
        harness.fastbert_path(impl, device, ids)
        model = fastbert.BertModel(fastbert.BertConfig(**config_kwargs, attn_implementation=impl))
        model.check_inputs = False  # the benchmark feeds valid inputs; keep the validation sync out of the timing
    else:
        import transformers

        model = transformers.BertModel(fastbert.BertConfig(**config_kwargs).to_hf(attn_implementation=impl))
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.to(device)


def run_encoder(device: torch.device | None = None, quick: bool = False, model: str | None = None,
                batch: int | None = None, max_lens: tuple[int, ...] | None = None) -> list[dict]:
    from tqdm import tqdm

    device = torch.device(device or harness.default_device())
    cuda = device.type == "cuda"
    model = model or ("base" if cuda else "mini")
    batch = batch or (32 if cuda else 8)
    max_lens = max_lens or ((128, 512) if cuda else ((128,) if quick else (128, 512)))
    dtype = harness.bench_dtype(device)
    config_kwargs = CONFIGS[model]
    rows: list[dict] = []
    reference_weights = None
    cases = [(L, m) for L in max_lens for m in ("fwd", "fwd+bwd")]
    for max_len, mode in tqdm(cases, desc="bench_bert", leave=False):
        lengths = harness.imdb_like_lengths(batch, max_len, seed=max_len)
        seqlen = int(lengths.max())
        mask = harness.lengths_to_mask(lengths, seqlen).to(device)
        g = torch.Generator().manual_seed(1)
        ids = (torch.randint(1000, 30000, (batch, seqlen), generator=g).to(device) * mask)
        timed = []  # (row, step, model) of the providers that run here
        for provider in _providers(device):
            row = {"bench": "bert", "part": "encoder", "provider": provider, "mode": mode,
                   "shape": f"{model} {batch}x{seqlen}", "max_len": max_len, "real_tokens": int(lengths.sum()),
                   "dtype": harness.dtype_name(dtype)}
            rows.append(row)
            with harness.noted(row, failures=False):
                net = _build(provider, config_kwargs, device, ids, reference_weights)
                if reference_weights is None:
                    reference_weights = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                timed.append((row, _encoder_step(net, mode, dtype, ids, mask), net))
        _time_rows(timed, device, cpu_rep_ms=300, min_reps=3)
        for row, _, net in timed:
            _note_unpadding(row, net, mask)
        del timed
        harness.release(device)
    harness.add_speedups(rows, "fastbert-eager")
    harness.add_speedups(rows, "hf-sdpa")
    return rows


def _encoder_step(net, mode: str, dtype: torch.dtype, ids: torch.Tensor, mask: torch.Tensor):
    if mode == "fwd":
        net = net.eval().to(dtype)

        def step():
            with torch.no_grad():
                net(input_ids=ids, attention_mask=mask)
        return step
    net = net.train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ids.is_cuda else contextlib.nullcontext()

    def step():
        with autocast:
            out = net(input_ids=ids, attention_mask=mask)[0]
        out.float().square().mean().backward()
    return step


def _time_rows(timed: list, device: torch.device, cpu_rep_ms: float, min_reps: int) -> None:
    """Time the steps of ``timed`` [(row, step, ...)] against each other (``harness.bench_interleaved``: alternating
    rounds on CPU, where the machine's drift would otherwise favour whichever provider ran first) and fill in each
    row's statistics, real tokens/s and CUDA peak memory."""
    if not timed:
        return
    stats = harness.bench_interleaved({row["provider"]: step for row, step, *_ in timed}, device, rep_ms=1000,
                                      cpu_rep_ms=cpu_rep_ms, min_reps=min_reps)
    for row, step, *_ in timed:
        row.update(stats[row["provider"]])
        row["real_tokens_per_s"] = row["real_tokens"] / (row["ms"] / 1e3)
        row["peak_mem_mb"] = harness.peak_memory_mb(step, device)


PRETRAIN_PROVIDERS = ["fastbert-fused", "fastbert-fused-packed", "fastbert-sdpa", "fastbert-eager", "hf-eager",
                      "hf-sdpa", "hf-sdpa-compile"]


def _pretrain_batch(batch: int, max_len: int, device: torch.device, vocab: int = 30522):
    """An IMDb-like MLM+NSP batch, padded and packed (``fastbert.ops.padding``), with 15% labeled positions
    (computed on the host, as the collator does, so no device sync is needed to find them)."""
    from fastbert.models.bert import labeled_positions
    from fastbert.ops import padding

    lengths = harness.imdb_like_lengths(batch, max_len, seed=max_len)
    seqlen = int(lengths.max())
    mask = harness.lengths_to_mask(lengths, seqlen)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, vocab, (batch, seqlen), generator=g) * mask
    labels = torch.where((torch.rand(batch, seqlen, generator=g) < 0.15) & mask.bool(), ids, -100)
    padded = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), labels=labels,
                  next_sentence_label=torch.randint(0, 2, (batch,), generator=g))
    packed_ids = padding.padded_to_packed(ids, mask)
    packed = dict(input_ids=packed_ids, token_type_ids=torch.zeros_like(packed_ids),
                  labels=padding.padded_to_packed(labels, mask), cu_seqlens=padding.seqlens_to_cu_seqlens(lengths),
                  max_seqlen=seqlen, next_sentence_label=padded["next_sentence_label"])
    padded_positions, packed_positions = labeled_positions(labels), labeled_positions(packed["labels"])
    to = lambda d: {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}  # noqa: E731
    return lengths, to(padded), to(packed), padded_positions.to(device), packed_positions.to(device)


def _train_step(net, inputs: dict, compiled: bool):
    """One AdamW step of ``net`` on ``inputs`` (bf16 autocast on CUDA)."""
    cuda = next(net.parameters()).is_cuda
    fwd = torch.compile(net) if compiled else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=cuda)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def step():
        with autocast:
            loss = fwd(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def run_pretrain(device: torch.device, quick: bool = False, model: str | None = None,
                 batch: int | None = None, max_lens: tuple[int, ...] | None = None) -> list[dict]:
    import fastbert
    from tqdm import tqdm

    cuda = device.type == "cuda"
    model = model or ("base" if cuda else "mini")
    batch = batch or (32 if cuda else 8)
    max_lens = max_lens or ((128, 512) if cuda else (128,))
    config_kwargs = CONFIGS[model]
    peak = peak_flops(device)
    rows: list[dict] = []
    init = fastbert.BertForPreTraining(fastbert.BertConfig(**config_kwargs)).state_dict()
    for max_len in tqdm(max_lens, desc="bench_bert pretrain", leave=False):
        lengths, padded, packed, pad_pos, pack_pos = _pretrain_batch(batch, max_len, device)
        timed = []  # (row, step, model, inputs) of the providers that run here
        for provider in PRETRAIN_PROVIDERS:
            row = {"bench": "bert", "part": "pretrain", "provider": provider, "mode": "train step",
                   "shape": f"{model} {batch}x{int(lengths.max())}", "max_len": max_len,
                   "real_tokens": int(lengths.sum())}
            rows.append(row)
            with harness.noted(row):
                family, impl = provider.split("-")[:2]
                if provider.endswith("compile"):
                    harness.require_cuda(device, "compile time dominates a CPU smoke run")
                if family == "fastbert":
                    harness.fastbert_path(impl, device, padded["input_ids"])
                    net = fastbert.BertForPreTraining(fastbert.BertConfig(**config_kwargs, attn_implementation=impl))
                    net.bert.check_inputs = False
                    inputs = dict(packed, masked_positions=pack_pos) if provider.endswith("packed") else dict(
                        padded, masked_positions=pad_pos)
                else:
                    import transformers

                    net = transformers.BertForPreTraining(
                        fastbert.BertConfig(**config_kwargs).to_hf(attn_implementation=impl))
                    inputs = padded
                net.load_state_dict(init, strict=False)
                net = net.to(device).train()
                step = _train_step(net, inputs, compiled=provider.endswith("compile"))
                step()  # a provider that fails, fails here, in its own row
                timed.append((row, step, net, inputs))
        _time_rows(timed, device, cpu_rep_ms=600, min_reps=5)
        for row, _, net, inputs in timed:
            row["mfu"] = pretrain_flops(config_kwargs, lengths) / (row["ms"] / 1e3) / peak if peak else None
            if "attention_mask" in inputs:
                _note_unpadding(row, net, padded["attention_mask"])
        del timed
        harness.release(device)
    harness.add_speedups(rows, "fastbert-eager", group=("max_len",))
    harness.add_speedups(rows, "hf-sdpa", group=("max_len",))
    return rows


def run_unpad_sweep(device: torch.device, quick: bool = False) -> list[dict]:
    """Forward time padded vs unpadded inside the model, by padding fraction (same weights, same tokens), on the
    path ``choose_path("auto", device)`` picks; each row also says what that path's rule (``Path.unpads``) picks."""
    import fastbert

    cuda = device.type == "cuda"
    model = "base" if cuda else "mini"
    batch, seqlen = (32, 512) if cuda else (8, 256)
    net = fastbert.BertModel(fastbert.BertConfig(**CONFIGS[model], attn_implementation="auto"))
    net = net.to(device, harness.bench_dtype(device)).eval()  # the model asks choose_path("auto", device) here
    net.check_inputs = False
    path = net.path
    rows = []
    for padding in ((0.1, 0.3) if quick else (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)):
        lengths = torch.full((batch,), seqlen)
        n_short = int(round(padding * batch * 2))  # half the rows lose ~2*padding of their tokens on average
        lengths[:n_short] = max(1, int(seqlen * 0.5))
        mask = harness.lengths_to_mask(lengths, seqlen).to(device)
        ids = torch.randint(1000, 30000, (batch, seqlen), device=device) * mask
        frac = 1.0 - float(mask.float().mean())

        def fwd(unpad: str) -> None:
            net.unpad = unpad
            with torch.no_grad():
                net(ids, mask)

        # alternating rounds: on CPU the two forms see the same drift (see harness.bench_interleaved)
        stats = harness.bench_interleaved({u: (lambda u=u: fwd(u)) for u in ("never", "always")}, device,
                                          rep_ms=500, cpu_rep_ms=600, min_reps=5)
        times = {u: st["ms"] for u, st in stats.items()}
        rule = "unpads" if path.unpads(int(lengths.sum()), mask.numel()) else "keeps padding"
        rows.append({"bench": "bert", "part": "unpad sweep", "provider": f"fastbert-{path.name}", "mode": "fwd",
                     "shape": f"{model} {batch}x{seqlen} pad={frac:.2f}", "real_tokens": int(lengths.sum()),
                     "ms": times["always"], "note": f"padded {times['never']:.2f} ms -> unpadded {times['always']:.2f} ms "
                                                     f"({times['never'] / times['always']:.2f}x); auto rule {rule}"})
    return rows


def run(device: torch.device | None = None, quick: bool = False, model: str | None = None,
        batch: int | None = None) -> list[dict]:
    device = torch.device(device or harness.default_device())
    rows = run_encoder(device, quick, model, batch)
    rows += run_pretrain(device, quick, model, batch)
    rows += run_unpad_sweep(device, quick)
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
