"""``python -m fastbert.pretrain``: BERT pretraining (MLM + NSP) from raw text.

    python -m fastbert.pretrain --data ../shared/data/imdb_2500.csv --text-column review --output runs/pretrain
    torchrun --nproc_per_node 8 -m fastbert.pretrain --data corpus.txt --preset base --output runs/base

Data: a CSV with a header (``--text-column`` names the text column) or a plain text file with blank lines between
documents. Documents are split into sentences, WordPiece-tokenized (``--vocab vocab.txt``, or a vocabulary trained
on the corpus with Hugging Face tokenizers' WordPiece trainer), paired for NSP and masked for MLM by the C++
collator (fastbert.data). The model comes from a preset (mini / small / base) or ``--config config.json``.

The run folder (``--output``) receives ``checkpoint.pt`` (model, optimizer, scheduler, RNG states of every rank,
data position; written atomically), ``log.jsonl`` (one line per step) and the final model as a Hugging Face folder
(config.json, model.safetensors, vocab.txt) that ``fastbert.finetune --model`` and ``from_pretrained`` load.
``--resume`` continues at the exact step: the same batches, masks and dropout as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

from . import training as T

PRESETS = {
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PROG = "python -m fastbert.pretrain"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=T.HelpFormatter)
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
    T.add_common_args(p, default_lr=5e-4, default_batch=32, default_seq=128)
    return p


def _load_texts(args) -> list[str]:
    from .data import load_csv_texts, load_text_documents

    if not os.path.isfile(args.data):
        raise T.CLIError(f"--data {args.data!r}: no such file")
    try:
        if _is_csv(args):
            return load_csv_texts(args.data, args.text_column)
        return load_text_documents(args.data)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise T.CLIError(f"--data: {exc}") from None


def _check_vocab(tokens: list[str], what: str):
    from .data import SpecialTokens

    missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]") if t not in set(tokens)]
    if missing:
        raise T.CLIError(f"{what} lacks the special token(s) {', '.join(missing)}")
    return SpecialTokens.from_vocab(tokens)


def _vocab_tokens(args, texts: list[str], checkpoint: dict | None, dist_info: T.DistInfo) -> list[str]:
    from .data import read_vocab

    if args.vocab is not None:
        if not os.path.isfile(args.vocab):
            raise T.CLIError(f"--vocab {args.vocab!r}: no such file")
        try:
            tokens = read_vocab(args.vocab)
        except (ValueError, UnicodeDecodeError) as exc:
            raise T.CLIError(f"--vocab {args.vocab!r}: {exc}") from None
        _check_vocab(tokens, f"--vocab {args.vocab!r}")
        return tokens
    if checkpoint is not None:
        return list(checkpoint["vocab"])
    if args.vocab_size < len(SPECIAL_TOKENS) + 1:
        raise T.CLIError(f"--vocab-size must be > {len(SPECIAL_TOKENS)}, got {args.vocab_size}")
    tokens = None
    if dist_info.is_main:  # one rank trains; the others receive the same vocabulary
        from tokenizers import BertWordPieceTokenizer

        tok = BertWordPieceTokenizer(lowercase=not args.cased)
        tok.train_from_iterator(texts, vocab_size=args.vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                show_progress=False)
        # the trainer's id order varies between runs (hash-map order); sort for a reproducible vocab.txt
        tokens = SPECIAL_TOKENS + sorted(set(tok.get_vocab()) - set(SPECIAL_TOKENS))
    return T.broadcast_object(tokens, dist_info)


def _model_config(args, special, device: torch.device):
    from .config import BertConfig

    if args.config is not None:
        if not os.path.isfile(args.config):
            raise T.CLIError(f"--config {args.config!r}: no such file")
        try:
            config = BertConfig.from_json_file(args.config)
        except (ValueError, TypeError, KeyError) as exc:
            raise T.CLIError(f"--config {args.config!r}: {exc}") from None
    else:
        config = BertConfig(**PRESETS[args.preset])
    config = config.replace(vocab_size=special.vocab_size, pad_token_id=special.pad_token_id,
                            attn_implementation=args.attn or T.default_attn(device))
    if config.max_position_embeddings < args.max_seq_len:
        raise T.CLIError(f"--max-seq-len {args.max_seq_len} exceeds the model's max_position_embeddings "
                         f"{config.max_position_embeddings}")
    return config


def _compute(device: torch.device):
    def compute(model, batch):
        inputs = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        out = model(**inputs)
        labels = inputs["labels"]
        selected = labels != -100
        with torch.no_grad():
            predicted = out.prediction_logits[selected].argmax(-1)  # only the labelled positions
            correct = (predicted == labels[selected]).sum()
            tokens = inputs["attention_mask"].sum() if "attention_mask" in inputs else torch.tensor(
                labels.numel(), device=device)
        return out.loss, correct, selected.sum(), tokens

    return compute


def run(args) -> int:
    from .data import MLMCollator, NSPDataset
    from .models import BertForPreTraining

    T.check_common_args(args)
    if not 0 < args.mlm_probability < 1:
        raise T.CLIError(f"--mlm-probability must be in (0, 1), got {args.mlm_probability}")
    if args.max_seq_len < 5:
        raise T.CLIError(f"--max-seq-len must be >= 5 for NSP pairs, got {args.max_seq_len}")
    dist_info = T.setup_distributed(args.device)
    resume_path = None if args.resume is None else (args.resume or os.path.join(args.output, T.CHECKPOINT_NAME))

    # ---- validate everything before writing anything ------------------------------------------------------------
    def validate():
        T.check_output_dir(args.output, args.resume is not None, args.overwrite)
        texts = _load_texts(args)
        checkpoint = T.load_checkpoint(resume_path, "pretrain") if resume_path else None
        return texts, checkpoint

    texts, checkpoint = T.check_on_all_ranks(validate, dist_info)
    tokens = T.check_on_all_ranks(lambda: _vocab_tokens(args, texts, checkpoint, dist_info), dist_info)
    special = _check_vocab(tokens, "the vocabulary")
    config = T.check_on_all_ranks(lambda: _model_config(args, special, dist_info.device), dist_info)

    workdir = tempfile.TemporaryDirectory(prefix="fastbert-pretrain-")
    vocab_path = os.path.join(workdir.name, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in tokens))

    def build_dataset():
        try:
            return NSPDataset(texts, vocab_path, max_seq_len=args.max_seq_len, short_seq_prob=args.short_seq_prob,
                              dupe_factor=args.dupe_factor, seed=args.seed, lowercase=not args.cased)
        except ValueError as exc:
            raise T.CLIError(f"--data {args.data!r}: {exc}") from None

    dataset = T.check_on_all_ranks(build_dataset, dist_info)
    batches = T.EpochBatches(len(dataset), args.batch_size, seed=args.seed, rank=dist_info.rank,
                             world_size=dist_info.world_size)
    total_steps = T.total_steps_for(args, batches)
    warmup = T.resolve_warmup(args.warmup_steps, args.warmup_ratio, total_steps)
    run_config = {
        "data_sha256": T.file_fingerprint(args.data), "text_column": args.text_column if _is_csv(args) else None,
        "max_seq_len": args.max_seq_len, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "world_size": dist_info.world_size, "seed": args.seed, "total_steps": total_steps, "lr": args.lr,
        "warmup_steps": warmup, "weight_decay": args.weight_decay, "mlm_probability": args.mlm_probability,
        "whole_word_mask": args.whole_word_mask, "short_seq_prob": args.short_seq_prob,
        "dupe_factor": args.dupe_factor, "cased": args.cased,
    }
    if checkpoint is not None:
        def check_resume():
            T.compare_run_config(T.comparable_config(checkpoint["config"]), T.comparable_config(config.to_dict()),
                                 resume_path)
            if list(checkpoint["vocab"]) != tokens:
                raise T.CLIError(f"--resume: {resume_path!r} was trained with another vocabulary")
            T.compare_run_config(checkpoint["run"], run_config, resume_path)
        T.check_on_all_ranks(check_resume, dist_info)

    # ---- build ---------------------------------------------------------------------------------------------------
    device = dist_info.device
    T.seed_everything(args.seed)
    model = BertForPreTraining(config)
    ddp_model, optimizer, scheduler, position = T.prepare_training(model, checkpoint, args, dist_info, warmup,
                                                                   total_steps)

    collator = MLMCollator.from_vocab(tokens, mlm_probability=args.mlm_probability,
                                      whole_word_mask=args.whole_word_mask, packed=args.packed, seed=args.seed)

    def make_batches(epoch, index_batches):
        collator.set_epoch(epoch)  # masks depend on (seed, epoch, sample index) only
        return T.make_loader(dataset, index_batches, collator, args.num_workers)

    log_path = T.prepare_log(args.output, checkpoint is not None, position, dist_info)

    def on_checkpoint(pos, rng_states):
        T.save_checkpoint(os.path.join(args.output, T.CHECKPOINT_NAME),
                          T.checkpoint_state("pretrain", model, optimizer, scheduler, pos, rng_states, config.to_dict(),
                                             run_config, args, vocab=tokens))

    loop = T.TrainLoop(model=model, ddp_model=ddp_model, optimizer=optimizer, scheduler=scheduler,
                       dist_info=dist_info, batches=batches, make_batches=make_batches, compute=_compute(device),
                       total_steps=total_steps, grad_accum=args.grad_accum, max_grad_norm=args.max_grad_norm,
                       autocast_dtype=T.autocast_dtype_for(device, args.precision), log_path=log_path,
                       save_every=args.save_every, on_checkpoint=on_checkpoint, progress=not args.no_progress,
                       accuracy_name="mlm_acc", desc="pretrain")
    if position.step >= total_steps:
        if dist_info.is_main:
            print(f"pretrain: already at step {position.step}/{total_steps}; nothing to do")
        return 0
    position = loop.run(position, stop_after=args.stop_after)
    in_sync = T.replicas_in_sync(model, dist_info)
    if dist_info.is_main:
        T.export_pretrained(model, args.output, tokens, {"do_lower_case": not args.cased})
        last = loop.last
        print(f"pretrain: step {position.step}/{total_steps} epoch {position.epoch} loss {last.get('loss', 0):.4f} "
              f"mlm_acc {last.get('mlm_acc', 0):.4f} tokens/s {loop.tokens_per_s:,.0f} ranks {dist_info.world_size}"
              f"{'' if in_sync else ' (REPLICAS DIVERGED)'} -> {args.output}")
    workdir.cleanup()
    return 0 if in_sync else 1


def _is_csv(args) -> bool:
    return args.format == "csv" or (args.format == "auto" and args.data.lower().endswith(".csv"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return T.run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
