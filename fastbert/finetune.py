"""``python -m fastbert.finetune``: sequence classification from a pretrained BERT folder, with held-out accuracy.

    python -m fastbert.finetune --data ../shared/data/imdb_2500.csv --text-column review --label-column sentiment \\
        --model runs/pretrain --output runs/imdb

``--model`` is a local Hugging Face folder (config.json, model.safetensors, vocab.txt): a ``fastbert.pretrain``
output or e.g. sentence-transformers/all-MiniLM-L6-v2. Labels are the distinct values of ``--label-column``
(sorted; numerically when they are all integers). A seeded ``--eval-fraction`` of the rows is held out and never
trained on; the accuracy on it is printed at the end and written to ``OUTPUT/eval.json``. Progress bar, atomic
checkpoints, ``--resume`` and torchrun data parallelism behave as in ``fastbert.pretrain``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np
import torch

from . import training as T

PROG = "python -m fastbert.finetune"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=T.HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="CSV file with a header row")
    g.add_argument("--text-column", default="text", help="column with the text to classify")
    g.add_argument("--label-column", default="label", help="column with the class label")
    g.add_argument("--eval-fraction", type=float, default=0.2, help="held-out fraction of the rows (seeded split)")
    g.add_argument("--max-train", type=int, default=None, help="use at most this many training rows")
    g.add_argument("--max-eval", type=int, default=None, help="evaluate on at most this many held-out rows")
    g.add_argument("--eval-batch-size", type=int, default=64, help="sequences per evaluation batch")
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="pretrained model folder (config.json, weights, vocab.txt)")
    T.add_common_args(p, default_lr=5e-5, default_batch=16, default_seq=128)
    return p


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
def read_labelled_csv(path: str, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Texts and label strings of the rows where both are non-empty (CLIError for a missing file or column)."""
    if not os.path.isfile(path):
        raise T.CLIError(f"--data {path!r}: no such file")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for flag, column in (("--text-column", text_column), ("--label-column", label_column)):
                if column not in columns:
                    raise T.CLIError(f"--data {path!r}: {flag} {column!r} is not a column (columns: {columns})")
            texts, labels = [], []
            for row in reader:
                text, label = (row[text_column] or "").strip(), (row[label_column] or "").strip()
                if text and label:
                    texts.append(text)
                    labels.append(label)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise T.CLIError(f"--data {path!r}: {exc}") from None
    if not texts:
        raise T.CLIError(f"--data {path!r}: no rows with both {text_column!r} and {label_column!r}")
    return texts, labels


def label_names(labels: list[str]) -> list[str]:
    names = sorted(set(labels))
    try:
        names = sorted(names, key=int)
    except ValueError:
        pass
    return names


def split_indices(n: int, eval_fraction: float, seed: int, max_train: int | None, max_eval: int | None):
    """A seeded permutation: its first round(eval_fraction * n) rows are held out, the rest train."""
    order = np.random.default_rng([seed % 2**32, 7]).permutation(n)
    n_eval = max(1, int(round(eval_fraction * n)))
    held_out, train = order[:n_eval], order[n_eval:]
    return train[:max_train].tolist(), held_out[:max_eval].tolist()


class EncodedDataset(torch.utils.data.Dataset):
    """Token ids ([CLS] text [SEP], truncated) and label ids; item i = (ids int64 [n], label)."""

    def __init__(self, ids: list[np.ndarray], labels: list[int]):
        self.ids = ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.ids[i], self.labels[i]


class ClassificationCollator:
    """Pads (or packs) with fastbert.data.collate and adds ``labels`` int64 [batch]."""

    def __init__(self, pad_token_id: int, packed: bool):
        self.pad_token_id = pad_token_id
        self.packed = packed

    def __call__(self, items):
        from .data import collate

        batch = collate([ids for ids, _ in items], pad_token_id=self.pad_token_id, packed=self.packed)
        batch["labels"] = torch.tensor([label for _, label in items], dtype=torch.int64)
        return batch


def _tokenize(texts: list[str], vocab_file: str, lowercase: bool, max_seq_len: int) -> list[np.ndarray]:
    from .data import load_wordpiece_tokenizer

    tokenizer = load_wordpiece_tokenizer(vocab_file, lowercase=lowercase)
    tokenizer.enable_truncation(max_seq_len)
    return [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(texts, add_special_tokens=True)]


def _model_files(folder: str) -> tuple[str, str, bool]:
    """(folder holding config.json, vocab.txt path, lowercase) of a pretrained model folder."""
    from .models.loading import resolve_model_folder

    if not os.path.isdir(folder):
        raise T.CLIError(f"--model {folder!r}: no such folder")
    try:
        model_dir = resolve_model_folder(folder)
    except FileNotFoundError as exc:
        raise T.CLIError(f"--model: {exc}") from None
    vocab = next((os.path.join(d, "vocab.txt") for d in (model_dir, folder)
                  if os.path.isfile(os.path.join(d, "vocab.txt"))), None)
    if vocab is None:
        raise T.CLIError(f"--model {folder!r}: no vocab.txt")
    lowercase = True
    for d in (model_dir, folder):
        cfg = os.path.join(d, "tokenizer_config.json")
        if os.path.isfile(cfg):
            with open(cfg, encoding="utf-8") as f:
                lowercase = bool(json.load(f).get("do_lower_case", True))
            break
    return model_dir, vocab, lowercase


# ----------------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, dataset, collator, batch_size: int, device: torch.device, autocast_dtype) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        labels = batch.pop("labels").to(device)
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        with (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else torch.no_grad()):
            logits = model(**inputs).logits
        correct += int((logits.argmax(-1) == labels).sum())
    model.train()
    return correct / max(1, len(dataset))


def _compute(device: torch.device):
    def compute(model, batch):
        inputs = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        out = model(**inputs)
        labels = inputs["labels"]
        with torch.no_grad():
            correct = (out.logits.argmax(-1) == labels).sum()
            tokens = inputs["attention_mask"].sum() if "attention_mask" in inputs else torch.tensor(
                inputs["input_ids"].numel(), device=device)
        return out.loss, correct, torch.tensor(labels.numel(), device=device), tokens

    return compute


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------
def run(args) -> int:
    from .config import BertConfig
    from .data import SpecialTokens, read_vocab
    from .models import BertForSequenceClassification

    T.check_common_args(args)
    if not 0 < args.eval_fraction < 1:
        raise T.CLIError(f"--eval-fraction must be in (0, 1), got {args.eval_fraction}")
    for name in ("max_train", "max_eval"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise T.CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    dist_info = T.setup_distributed(args.device)
    resume_path = None if args.resume is None else (args.resume or os.path.join(args.output, T.CHECKPOINT_NAME))

    # ---- validate everything before writing anything ------------------------------------------------------------
    def validate():
        T.check_output_dir(args.output, args.resume is not None, args.overwrite)
        texts, labels = read_labelled_csv(args.data, args.text_column, args.label_column)
        names = label_names(labels)
        if len(names) < 2:
            raise T.CLIError(f"--label-column {args.label_column!r} has a single value {names[0]!r}: nothing to learn")
        model_dir, vocab_file, lowercase = _model_files(args.model)
        try:
            tokens = read_vocab(vocab_file)
        except (ValueError, UnicodeDecodeError) as exc:
            raise T.CLIError(f"--model: {vocab_file!r}: {exc}") from None
        missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]") if t not in set(tokens)]
        if missing:
            raise T.CLIError(f"--model: {vocab_file!r} lacks the special token(s) {', '.join(missing)}")
        try:
            base_config = BertConfig.from_pretrained(model_dir)
        except (ValueError, TypeError, OSError) as exc:
            raise T.CLIError(f"--model: {exc}") from None
        if base_config.max_position_embeddings < args.max_seq_len:
            raise T.CLIError(f"--max-seq-len {args.max_seq_len} exceeds the model's max_position_embeddings "
                             f"{base_config.max_position_embeddings}")
        checkpoint = T.load_checkpoint(resume_path, "finetune") if resume_path else None
        return texts, labels, names, model_dir, vocab_file, lowercase, tokens, checkpoint

    texts, labels, names, model_dir, vocab_file, lowercase, tokens, checkpoint = T.check_on_all_ranks(
        validate, dist_info)
    special = SpecialTokens.from_vocab(tokens)
    label_id = {name: i for i, name in enumerate(names)}
    train_idx, eval_idx = split_indices(len(texts), args.eval_fraction, args.seed, args.max_train, args.max_eval)
    encoded = _tokenize([texts[i] for i in train_idx + eval_idx], vocab_file, lowercase, args.max_seq_len)
    train_set = EncodedDataset(encoded[:len(train_idx)], [label_id[labels[i]] for i in train_idx])
    eval_set = EncodedDataset(encoded[len(train_idx):], [label_id[labels[i]] for i in eval_idx])
    if len(tokens) > BertConfig.from_pretrained(model_dir).vocab_size:
        raise T.CLIError(f"--model {args.model!r}: vocab.txt has {len(tokens)} tokens, more than the model's "
                         f"vocab_size {BertConfig.from_pretrained(model_dir).vocab_size}")

    batches = T.EpochBatches(len(train_set), args.batch_size, seed=args.seed, rank=dist_info.rank,
                             world_size=dist_info.world_size)
    total_steps = T.total_steps_for(args, batches)
    warmup = T.resolve_warmup(args.warmup_steps, args.warmup_ratio, total_steps)
    id2label = {str(i): n for i, n in enumerate(names)}
    run_config = {
        "data_sha256": T.file_fingerprint(args.data), "text_column": args.text_column,
        "label_column": args.label_column, "labels": names, "eval_fraction": args.eval_fraction,
        "max_train": args.max_train, "max_eval": args.max_eval, "max_seq_len": args.max_seq_len,
        "batch_size": args.batch_size, "grad_accum": args.grad_accum, "world_size": dist_info.world_size,
        "seed": args.seed, "total_steps": total_steps, "lr": args.lr, "warmup_steps": warmup,
        "weight_decay": args.weight_decay, "vocab": tokens,
    }
    device = dist_info.device
    attn = args.attn or T.default_attn(device)

    def load_model():
        try:
            return BertForSequenceClassification.from_pretrained(
                model_dir, attn_implementation=attn, num_labels=len(names), id2label=id2label,
                label2id={n: i for i, n in enumerate(names)})
        except (ValueError, OSError) as exc:
            raise T.CLIError(f"--model {args.model!r}: {exc}") from None

    T.seed_everything(args.seed)  # the classifier's fresh init
    model = T.check_on_all_ranks(load_model, dist_info)
    if checkpoint is not None:
        def check_resume():
            T.compare_run_config(T.comparable_config(checkpoint["config"]), T.comparable_config(model.config.to_dict()),
                                 resume_path)
            T.compare_run_config(checkpoint["run"], run_config, resume_path)
        T.check_on_all_ranks(check_resume, dist_info)

    # ---- build ---------------------------------------------------------------------------------------------------
    ddp_model, optimizer, scheduler, position = T.prepare_training(model, checkpoint, args, dist_info, warmup,
                                                                   total_steps)

    collator = ClassificationCollator(special.pad_token_id, args.packed)
    log_path = T.prepare_log(args.output, checkpoint is not None, position, dist_info)

    def on_checkpoint(pos, rng_states):
        T.save_checkpoint(os.path.join(args.output, T.CHECKPOINT_NAME),
                          T.checkpoint_state("finetune", model, optimizer, scheduler, pos, rng_states, model.config.to_dict(),
                                             run_config, args))

    autocast_dtype = T.autocast_dtype_for(device, args.precision)
    loop = T.TrainLoop(model=model, ddp_model=ddp_model, optimizer=optimizer, scheduler=scheduler,
                       dist_info=dist_info, batches=batches,
                       make_batches=lambda epoch, idx: T.make_loader(train_set, idx, collator, args.num_workers),
                       compute=_compute(device), total_steps=total_steps, grad_accum=args.grad_accum,
                       max_grad_norm=args.max_grad_norm, autocast_dtype=autocast_dtype, log_path=log_path,
                       save_every=args.save_every, on_checkpoint=on_checkpoint, progress=not args.no_progress,
                       accuracy_name="acc", desc="finetune")
    if position.step < total_steps:
        position = loop.run(position, stop_after=args.stop_after)
    in_sync = T.replicas_in_sync(model, dist_info)
    if dist_info.is_main:
        T.export_pretrained(model, args.output, tokens, {"do_lower_case": lowercase})
        accuracy = evaluate(model, eval_set, collator, args.eval_batch_size, device, autocast_dtype)
        majority = max(np.bincount(eval_set.labels, minlength=len(names))) / len(eval_set)
        result = {"step": position.step, "total_steps": total_steps, "accuracy": accuracy,
                  "majority_baseline": majority, "eval_examples": len(eval_set), "train_examples": len(train_set),
                  "labels": names, "train_loss": loop.last.get("loss")}
        T.atomic_write(os.path.join(args.output, "eval.json"),
                       lambda tmp: open(tmp, "w", encoding="utf-8").write(json.dumps(result, indent=2) + "\n"))
        print(f"finetune: step {position.step}/{total_steps} held-out accuracy {accuracy:.4f} on {len(eval_set)} "
              f"examples (majority class {majority:.4f}), tokens/s {loop.tokens_per_s:,.0f} "
              f"ranks {dist_info.world_size}{'' if in_sync else ' (REPLICAS DIVERGED)'} -> {args.output}")
    T.barrier(dist_info)
    return 0 if in_sync else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return T.run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
