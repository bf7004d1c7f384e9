"""``python -m fastbert.finetune``: sequence classification from a pretrained BERT folder, with held-out accuracy.

    python -m fastbert.finetune --data ../shared/data/imdb_2500.csv --text-column review --label-column sentiment \\
        --model runs/pretrain --output runs/imdb

``--model`` is a local Hugging Face folder (config.json, model.safetensors, vocab.txt): a ``fastbert.pretrain``
output or e.g. sentence-transformers/all-MiniLM-L6-v2. Labels are the distinct values of ``--label-column``
(sorted; numerically when they are all integers). A seeded ``--eval-fraction`` of the rows is held out and never
trained on; the accuracy on it is printed at the end and written to ``OUTPUT/eval.json``. Progress bar, verified
atomic checkpoints, ``--resume``, the NaN guard and torchrun data parallelism behave as in ``fastbert.pretrain``.
Exit codes: see ``--help``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from typing import Any

import numpy as np
import torch

from .training.checkpoint import (CheckpointFile, check_output_dir, comparable_config, compare_run_config,
                                  export_pretrained, file_fingerprint, first_nonfinite, resume_source, write_text)
from .training.cli import add_common_args, check_common_args, check_input_file, new_parser, run_cli
from .training.determinism import EpochBatches, make_loader, seed_everything
from .training.distributed import DistInfo, barrier, check_on_all_ranks, setup_distributed
from .training.errors import CLIError, reason
from .training.loop import (FitResult, TrainingJob, autocast_dtype_for, fit, resolve_warmup,
                            total_steps_for)

PROG = "python -m fastbert.finetune"


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(PROG, __doc__.split("\n\n")[0])
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
    add_common_args(p, default_lr=5e-5, default_batch=16, default_seq=128)
    return p


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
def read_labelled_csv(path: str, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Texts and label strings of the rows where both are non-empty (CLIError for a missing file or column)."""
    check_input_file("--data", path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if not columns:
                raise CLIError(f"--data {path!r} has no header row")
            for flag, column in (("--text-column", text_column), ("--label-column", label_column)):
                if column not in columns:
                    raise CLIError(f"--data {path!r}: {flag} {column!r} is not a column (columns: {columns})")
            texts, labels = [], []
            for row in reader:
                text, label = (row[text_column] or "").strip(), (row[label_column] or "").strip()
                if text and label:
                    texts.append(text)
                    labels.append(label)
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise CLIError(f"--data {path!r}: {reason(exc)}") from None
    if not texts:
        raise CLIError(f"--data {path!r}: no rows with both {text_column!r} and {label_column!r}")
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
        raise CLIError(f"--model {folder!r}: no such folder")
    try:
        model_dir = resolve_model_folder(folder)
    except FileNotFoundError as exc:
        raise CLIError(f"--model: {exc}") from None
    vocab = next((os.path.join(d, "vocab.txt") for d in (model_dir, folder)
                  if os.path.isfile(os.path.join(d, "vocab.txt"))), None)
    if vocab is None:
        raise CLIError(f"--model {folder!r}: no vocab.txt")
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
# validation (before anything is written)
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Inputs:
    """Everything the run reads, checked on every rank before anything is written."""

    texts: list[str]
    labels: list[str]
    names: list[str]
    model_dir: str
    vocab_file: str
    lowercase: bool
    tokens: list[str]
    base_config: Any  # the model folder's config.json, read once
    checkpoint: dict | None


def _check_args(args) -> None:
    check_common_args(args)
    if not 0 < args.eval_fraction < 1:
        raise CLIError(f"--eval-fraction must be in (0, 1), got {args.eval_fraction}")
    for name in ("max_train", "max_eval"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.eval_batch_size < 1:
        raise CLIError(f"--eval-batch-size must be >= 1, got {args.eval_batch_size}")


def _read_model_vocab(vocab_file: str) -> list[str]:
    from .data import read_vocab

    try:
        tokens = read_vocab(vocab_file)
    except (ValueError, OSError) as exc:
        raise CLIError(f"--model: {vocab_file!r}: {reason(exc)}") from None
    missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]") if t not in set(tokens)]
    if missing:
        raise CLIError(f"--model: {vocab_file!r} lacks the special token(s) {', '.join(missing)}")
    return tokens


def _read_model_config(args, model_dir: str, vocab_size: int):
    from .config import BertConfig

    try:
        config = BertConfig.from_pretrained(model_dir)
    except (ValueError, TypeError, OSError) as exc:
        raise CLIError(f"--model {args.model!r}: config.json: {reason(exc)}") from None
    if config.max_position_embeddings < args.max_seq_len:
        raise CLIError(f"--max-seq-len {args.max_seq_len} exceeds the model's max_position_embeddings "
                       f"{config.max_position_embeddings}")
    if vocab_size > config.vocab_size:
        raise CLIError(f"--model {args.model!r}: vocab.txt has {vocab_size} tokens, more than the model's "
                       f"vocab_size {config.vocab_size}")
    return config


def _validate(args, source: CheckpointFile | None) -> _Inputs:
    check_output_dir(args.output, source is not None, args.overwrite)
    texts, labels = read_labelled_csv(args.data, args.text_column, args.label_column)
    names = label_names(labels)
    if len(names) < 2:
        raise CLIError(f"--label-column {args.label_column!r} has a single value {names[0]!r}: nothing to learn")
    model_dir, vocab_file, lowercase = _model_files(args.model)
    tokens = _read_model_vocab(vocab_file)
    base_config = _read_model_config(args, model_dir, len(tokens))
    checkpoint = source.load("finetune") if source else None
    return _Inputs(texts, labels, names, model_dir, vocab_file, lowercase, tokens, base_config, checkpoint)


def _load_model(args, inputs: _Inputs, device: torch.device):
    """The classifier on the pretrained weights; a weights file that cannot be read, or that holds NaN/Inf, is a
    CLIError. safetensors reports truncated or garbled files as SafetensorError; pytorch_model.bin through
    torch.load as RuntimeError, EOFError or UnpicklingError."""
    import pickle

    from safetensors import SafetensorError

    from .models import BertForSequenceClassification

    names = inputs.names
    try:
        model = BertForSequenceClassification.from_pretrained(
            inputs.model_dir, attn_implementation=args.attn, num_labels=len(names),
            id2label={str(i): n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)})
    except (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CLIError(f"--model {args.model!r}: the weights file is truncated or corrupted ({reason(exc)})") from None
    except (ValueError, OSError) as exc:
        raise CLIError(f"--model {args.model!r}: {reason(exc)}") from None
    bad = first_nonfinite(model.state_dict().items())
    if bad is not None:
        raise CLIError(f"--model {args.model!r}: the weights hold NaN or Inf values (in {bad}), so the weights file "
                       "is corrupted")
    return model


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------
def _datasets(args, inputs: _Inputs) -> tuple[EncodedDataset, EncodedDataset]:
    """(train, held-out) after the seeded split, tokenized once."""
    label_id = {name: i for i, name in enumerate(inputs.names)}
    train_idx, eval_idx = split_indices(len(inputs.texts), args.eval_fraction, args.seed, args.max_train,
                                        args.max_eval)
    encoded = _tokenize([inputs.texts[i] for i in train_idx + eval_idx], inputs.vocab_file, inputs.lowercase,
                        args.max_seq_len)
    train_set = EncodedDataset(encoded[:len(train_idx)], [label_id[inputs.labels[i]] for i in train_idx])
    eval_set = EncodedDataset(encoded[len(train_idx):], [label_id[inputs.labels[i]] for i in eval_idx])
    return train_set, eval_set


def _run_config(args, inputs: _Inputs, world_size: int, total_steps: int, warmup: int) -> dict:
    """The settings a --resume must match exactly."""
    return {
        "data_sha256": file_fingerprint(args.data), "text_column": args.text_column,
        "label_column": args.label_column, "labels": inputs.names, "eval_fraction": args.eval_fraction,
        "max_train": args.max_train, "max_eval": args.max_eval, "max_seq_len": args.max_seq_len,
        "batch_size": args.batch_size, "grad_accum": args.grad_accum, "world_size": world_size,
        "seed": args.seed, "total_steps": total_steps, "lr": args.lr, "warmup_steps": warmup,
        "weight_decay": args.weight_decay, "vocab": inputs.tokens,
    }


def _check_resume(checkpoint: dict, path: str, model, run_config: dict) -> None:
    compare_run_config(comparable_config(checkpoint["config"]), comparable_config(model.config.to_dict()), path)
    compare_run_config(checkpoint["run"], run_config, path)


def _report(args, inputs: _Inputs, model, train_set, eval_set, collator, result: FitResult, total_steps: int,
            dist_info: DistInfo) -> None:
    """Rank 0: export the model, evaluate it on the held-out rows, write eval.json, print the summary line."""
    device = dist_info.device
    export_pretrained(model, args.output, inputs.tokens, {"do_lower_case": inputs.lowercase})
    accuracy = evaluate(model, eval_set, collator, args.eval_batch_size, device,
                        autocast_dtype_for(device, args.precision))
    majority = max(np.bincount(eval_set.labels, minlength=len(inputs.names))) / len(eval_set)
    summary = {"step": result.position.step, "total_steps": total_steps, "accuracy": accuracy,
               "majority_baseline": majority, "eval_examples": len(eval_set), "train_examples": len(train_set),
               "labels": inputs.names, "train_loss": result.last.get("loss")}
    write_text(os.path.join(args.output, "eval.json"), json.dumps(summary, indent=2) + "\n")
    print(f"finetune: step {result.position.step}/{total_steps} held-out accuracy {accuracy:.4f} on "
          f"{len(eval_set)} examples (majority class {majority:.4f}), tokens/s {result.tokens_per_s:,.0f} "
          f"ranks {dist_info.world_size}{'' if result.in_sync else ' (REPLICAS DIVERGED)'} -> {args.output}")


def run(args) -> int:
    from .data import SpecialTokens

    _check_args(args)
    dist_info = setup_distributed(args.device)
    source = resume_source(args)
    inputs = check_on_all_ranks(lambda: _validate(args, source), dist_info)
    train_set, eval_set = _datasets(args, inputs)
    batches = EpochBatches(len(train_set), args.batch_size, seed=args.seed, rank=dist_info.rank,
                           world_size=dist_info.world_size)
    total_steps = total_steps_for(args, batches)
    warmup = resolve_warmup(args.warmup_steps, args.warmup_ratio, total_steps)
    run_config = _run_config(args, inputs, dist_info.world_size, total_steps, warmup)

    seed_everything(args.seed)  # the classifier's fresh init
    model = check_on_all_ranks(lambda: _load_model(args, inputs, dist_info.device), dist_info)
    if inputs.checkpoint is not None:
        check_on_all_ranks(lambda: _check_resume(inputs.checkpoint, source.path, model, run_config), dist_info)
    collator = ClassificationCollator(SpecialTokens.from_vocab(inputs.tokens).pad_token_id, args.packed)
    result = fit(TrainingJob(
        kind="finetune", model=model, checkpoint=inputs.checkpoint, args=args, dist_info=dist_info,
        batches=batches, make_batches=lambda epoch, idx: make_loader(train_set, idx, collator, args.num_workers),
        compute=_compute(dist_info.device), total_steps=total_steps, warmup=warmup, config=model.config.to_dict(),
        run_config=run_config, accuracy_name="acc"))
    if dist_info.is_main:
        _report(args, inputs, model, train_set, eval_set, collator, result, total_steps, dist_info)
    barrier(dist_info)
    return 0 if result.in_sync else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
