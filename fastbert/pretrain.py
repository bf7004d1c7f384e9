"""``python -m fastbert.pretrain``: BERT pretraining (MLM + NSP) from raw text.

    python -m fastbert.pretrain --data ../shared/data/imdb_2500.csv --text-column review --output runs/pretrain
    torchrun --nproc_per_node 8 -m fastbert.pretrain --data corpus.txt --preset base --output runs/base

Data: a CSV with a header (``--text-column`` names the text column) or a plain text file with blank lines between
documents. Documents are split into sentences, WordPiece-tokenized (``--vocab vocab.txt``, or a vocabulary trained
on the corpus with Hugging Face tokenizers' WordPiece trainer), paired for NSP and masked for MLM by the C++
collator (fastbert.data). The model comes from a preset (mini / small / base) or ``--config config.json``.

The run folder (``--output``) receives ``checkpoint.pt`` (model, optimizer, scheduler, RNG states of every rank,
data position; written atomically, with its size and sha256 in ``checkpoint.pt.sha256``), ``log.jsonl`` (one line
per step) and the final model as a Hugging Face folder (config.json, model.safetensors, vocab.txt) that
``fastbert.finetune --model`` and ``from_pretrained`` load. ``--resume`` verifies the checkpoint and continues at
the exact step: the same batches, masks and dropout as an uninterrupted run. Exit codes: see ``--help``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

from .training.checkpoint import (check_output_dir, comparable_config, compare_run_config, export_pretrained,
                                  file_fingerprint, resume_source)
from .training.cli import add_common_args, check_common_args, check_input_file, new_parser, run_cli
from .training.determinism import EpochBatches, make_loader, seed_everything
from .training.distributed import DistInfo, barrier, broadcast_object, check_on_all_ranks, setup_distributed
from .training.errors import CLIError, reason
from .training.loop import TrainingJob, fit, resolve_warmup, total_steps_for

PRESETS = {
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PROG = "python -m fastbert.pretrain"


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(PROG, __doc__.split("\n\n")[0])
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="CSV file with a header, or a text file (blank line between documents)")
    g.add_argument("--format", choices=("auto", "csv", "text"), default="auto",
                   help="auto: CSV when the name ends in .csv")
    g.add_argument("--text-column", default="text", help="CSV column holding the documents")
    g.add_argument("--vocab", default=None, help="WordPiece vocab.txt (default: train one on the corpus)")
    g.add_argument("--vocab-size", type=int, default=8192, help="size of the trained vocabulary")
    g.add_argument("--cased", action="store_true", help="keep case (default: lowercase, as uncased BERT)")
    g.add_argument("--mlm-probability", type=float, default=0.15, help="fraction of tokens predicted")
    g.add_argument("--whole-word-mask", action="store_true", help="mask whole words (all their WordPieces)")
    g.add_argument("--short-seq-prob", type=float, default=0.1, help="NSP: chance of a shorter target length")
    g.add_argument("--dupe-factor", type=int, default=1, help="NSP: build the pairs this many times")
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=sorted(PRESETS), default="mini",
                   help="mini: L4 H256; small: L4 H512; base: L12 H768 (BERT-base)")
    g.add_argument("--config", default=None, help="config.json (HF BertConfig fields) instead of a preset")
    add_common_args(p, default_lr=5e-4, default_batch=32, default_seq=128)
    return p


# ----------------------------------------------------------------------------------------------------------------
# validation (before anything is written)
# ----------------------------------------------------------------------------------------------------------------
def _check_args(args) -> None:
    check_common_args(args)
    if not 0 < args.mlm_probability < 1:
        raise CLIError(f"--mlm-probability must be in (0, 1), got {args.mlm_probability}")
    if not 0 <= args.short_seq_prob <= 1:
        raise CLIError(f"--short-seq-prob must be in [0, 1], got {args.short_seq_prob}")
    if args.dupe_factor < 1:
        raise CLIError(f"--dupe-factor must be >= 1, got {args.dupe_factor}")
    if args.max_seq_len < 5:
        raise CLIError(f"--max-seq-len must be >= 5 for NSP pairs, got {args.max_seq_len}")


def _is_csv(args) -> bool:
    return args.format == "csv" or (args.format == "auto" and args.data.lower().endswith(".csv"))


def _load_texts(args) -> list[str]:
    import csv

    from .data import load_csv_texts, load_text_documents

    check_input_file("--data", args.data)
    try:
        if _is_csv(args):
            return load_csv_texts(args.data, args.text_column)
        return load_text_documents(args.data)
    except (ValueError, OSError, csv.Error) as exc:
        raise CLIError(f"--data {args.data!r}: {reason(exc)}") from None


def _check_vocab(tokens: list[str], what: str):
    from .data import SpecialTokens

    missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]") if t not in set(tokens)]
    if missing:
        raise CLIError(f"{what} lacks the special token(s) {', '.join(missing)}")
    return SpecialTokens.from_vocab(tokens)


def _read_vocab_file(path: str) -> list[str]:
    from .data import read_vocab

    check_input_file("--vocab", path)
    try:
        tokens = read_vocab(path)
    except (ValueError, OSError) as exc:
        raise CLIError(f"--vocab {path!r}: {reason(exc)}") from None
    _check_vocab(tokens, f"--vocab {path!r}")
    return tokens


def _vocab_tokens(args, texts: list[str], checkpoint: dict | None, dist_info: DistInfo) -> list[str]:
    if args.vocab is not None:
        return _read_vocab_file(args.vocab)
    if checkpoint is not None:
        return list(checkpoint["vocab"])
    if args.vocab_size < len(SPECIAL_TOKENS) + 1:
        raise CLIError(f"--vocab-size must be > {len(SPECIAL_TOKENS)}, got {args.vocab_size}")
    tokens = None
    if dist_info.is_main:  # one rank trains; the others receive the same vocabulary
        from tokenizers import BertWordPieceTokenizer

        tok = BertWordPieceTokenizer(lowercase=not args.cased)
        tok.train_from_iterator(texts, vocab_size=args.vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                show_progress=False)
        # the trainer's id order varies between runs (hash-map order); sort for a reproducible vocab.txt
        tokens = SPECIAL_TOKENS + sorted(set(tok.get_vocab()) - set(SPECIAL_TOKENS))
    return broadcast_object(tokens, dist_info)


def _model_config(args, special):
    from .config import BertConfig

    if args.config is not None:
        check_input_file("--config", args.config)
        try:
            config = BertConfig.from_json_file(args.config)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            raise CLIError(f"--config {args.config!r}: {reason(exc)}") from None
    else:
        config = BertConfig(**PRESETS[args.preset])
    config = config.replace(vocab_size=special.vocab_size, pad_token_id=special.pad_token_id,
                            attn_implementation=args.attn)
    if config.max_position_embeddings < args.max_seq_len:
        raise CLIError(f"--max-seq-len {args.max_seq_len} exceeds the model's max_position_embeddings "
                       f"{config.max_position_embeddings}")
    return config


def _build_dataset(args, texts: list[str], tokens: list[str]):
    from .data import NSPDataset

    with tempfile.TemporaryDirectory(prefix="fastbert-pretrain-") as workdir:
        vocab_path = os.path.join(workdir, "vocab.txt")
        with open(vocab_path, "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in tokens))
        try:
            return NSPDataset(texts, vocab_path, max_seq_len=args.max_seq_len, short_seq_prob=args.short_seq_prob,
                              dupe_factor=args.dupe_factor, seed=args.seed, lowercase=not args.cased)
        except ValueError as exc:
            raise CLIError(f"--data {args.data!r}: {exc}") from None


def _run_config(args, world_size: int, total_steps: int, warmup: int) -> dict:
    """The settings a --resume must match exactly."""
    return {
        "data_sha256": file_fingerprint(args.data), "text_column": args.text_column if _is_csv(args) else None,
        "max_seq_len": args.max_seq_len, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "world_size": world_size, "seed": args.seed, "total_steps": total_steps, "lr": args.lr,
        "warmup_steps": warmup, "weight_decay": args.weight_decay, "mlm_probability": args.mlm_probability,
        "whole_word_mask": args.whole_word_mask, "short_seq_prob": args.short_seq_prob,
        "dupe_factor": args.dupe_factor, "cased": args.cased,
    }


def _check_resume(checkpoint: dict, path: str, config, tokens: list[str], run_config: dict) -> None:
    compare_run_config(comparable_config(checkpoint["config"]), comparable_config(config.to_dict()), path)
    if list(checkpoint["vocab"]) != tokens:
        raise CLIError(f"--resume: {path!r} was trained with another vocabulary")
    compare_run_config(checkpoint["run"], run_config, path)


# ----------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------
def _compute(device: torch.device):
    from .config import IGNORE_INDEX

    def compute(model, batch):
        inputs = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        out = model(**inputs)
        labels = inputs["labels"]
        selected = labels != IGNORE_INDEX
        with torch.no_grad():
            predicted = out.prediction_logits[selected].argmax(-1)  # only the labelled positions
            correct = (predicted == labels[selected]).sum()
            tokens = inputs["attention_mask"].sum() if "attention_mask" in inputs else torch.tensor(
                labels.numel(), device=device)
        return out.loss, correct, selected.sum(), tokens

    return compute


def run(args) -> int:
    from .data import MLMCollator
    from .models import BertForPreTraining

    _check_args(args)
    dist_info = setup_distributed(args.device)
    source = resume_source(args)

    def validate():
        check_output_dir(args.output, source is not None, args.overwrite)
        return _load_texts(args), (source.load("pretrain") if source else None)

    texts, checkpoint = check_on_all_ranks(validate, dist_info)
    tokens = check_on_all_ranks(lambda: _vocab_tokens(args, texts, checkpoint, dist_info), dist_info)
    config = check_on_all_ranks(lambda: _model_config(args, _check_vocab(tokens, "the vocabulary")), dist_info)
    dataset = check_on_all_ranks(lambda: _build_dataset(args, texts, tokens), dist_info)
    batches = EpochBatches(len(dataset), args.batch_size, seed=args.seed, rank=dist_info.rank,
                           world_size=dist_info.world_size)
    total_steps = total_steps_for(args, batches)
    warmup = resolve_warmup(args.warmup_steps, args.warmup_ratio, total_steps)
    run_config = _run_config(args, dist_info.world_size, total_steps, warmup)
    if checkpoint is not None:
        check_on_all_ranks(lambda: _check_resume(checkpoint, source.path, config, tokens, run_config), dist_info)

    seed_everything(args.seed)
    model = BertForPreTraining(config)
    collator = MLMCollator.from_vocab(tokens, mlm_probability=args.mlm_probability,
                                      whole_word_mask=args.whole_word_mask, packed=args.packed, seed=args.seed)

    def make_batches(epoch, index_batches):
        collator.set_epoch(epoch)  # masks depend on (seed, epoch, sample index) only
        return make_loader(dataset, index_batches, collator, args.num_workers)

    result = fit(TrainingJob(
        kind="pretrain", model=model, checkpoint=checkpoint, args=args, dist_info=dist_info, batches=batches,
        make_batches=make_batches, compute=_compute(dist_info.device), total_steps=total_steps, warmup=warmup,
        config=config.to_dict(), run_config=run_config, accuracy_name="mlm_acc", extra={"vocab": tokens}))
    if dist_info.is_main:  # (a run already at its last step exports again: an export that failed is redone)
        export_pretrained(model, args.output, tokens, {"do_lower_case": not args.cased})
        last = result.last
        done = (f"loss {last.get('loss', 0):.4f} mlm_acc {last.get('mlm_acc', 0):.4f} tokens/s "
                f"{result.tokens_per_s:,.0f}" if result.steps_run else "already done, model exported again")
        print(f"pretrain: step {result.position.step}/{total_steps} epoch {result.position.epoch} {done} "
              f"ranks {dist_info.world_size}{'' if result.in_sync else ' (REPLICAS DIVERGED)'} -> {args.output}")
    barrier(dist_info)  # every rank leaves together: a rank tearing gloo down under rank 0's export aborts
    return 0 if result.in_sync else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
