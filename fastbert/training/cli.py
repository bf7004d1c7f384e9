"""The command-line surface both entry points share: options, their checks, and how a run ends.

``run_cli`` runs an entry point's body and turns every way it can stop early into one line on stderr
(``prog: error: ...``, printed by rank 0 only) and the exit code documented in ``fastbert.training.errors``:
2 bad input, 3 non-finite training, 4 an output that could not be written, 130 interrupted. No traceback
reaches the user for these; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable

from .distributed import teardown_distributed
from .errors import EXIT_CODES_HELP, CLIError, TrainingError, one_line, reason


_FLOAT32_MAX = 3.4028234663852886e38


def _say(prog: str, message: object) -> None:
    if os.environ.get("RANK", "0") == "0":  # every rank fails the same way; one of them says so
        print(f"{prog}: error: {one_line(message)}", file=sys.stderr)


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; TrainingError, KeyboardInterrupt and OSError become one line on stderr and an exit code."""
    try:
        return body()
    except TrainingError as exc:
        _say(prog, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        _say(prog, "interrupted; every file already written is complete (checkpoints and exports are replaced "
                   "atomically), so --resume continues from the last checkpoint")
        return 130
    except OSError as exc:  # an I/O failure outside the checkpoint and export writers (e.g. the log, a full disk)
        _say(prog, reason(exc))
        return 4
    finally:
        teardown_distributed()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: x)" only for real defaults that the help text does not already describe."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An entry point's parser, with the exit codes as its epilog."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=EXIT_CODES_HELP,
                                   formatter_class=HelpFormatter)


def add_common_args(parser, *, default_lr: float, default_batch: int, default_seq: int) -> None:
    """Options both entry points share (optimisation, checkpoints, devices, progress)."""
    g = parser.add_argument_group("optimisation")
    g.add_argument("--max-seq-len", type=int, default=default_seq, help="tokens per sequence incl. specials")
    g.add_argument("--batch-size", type=int, default=default_batch, help="sequences per micro-batch per process")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=default_lr, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps (default: --warmup-ratio)")
    g.add_argument("--warmup-ratio", type=float, default=0.1, help="warmup as a fraction of all steps")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, 0 = off")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs over the data)")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the data when --steps is not given")
    g.add_argument("--seed", type=int, default=0, help="seed for init, data order, masks and dropout")
    g.add_argument("--skip-nonfinite", type=int, default=0, metavar="N",
                   help="skip (no update) at most N steps over the whole run whose loss or gradient norm is NaN/Inf; "
                        "the next one stops the run with exit code 3 (default 0: stop at the first)")
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    g.add_argument("--attn", choices=("auto", "eager", "sdpa", "fused"), default="auto",
                   help="path: auto = fastbert.ops.choose_path's pick for the device (fused on CUDA, sdpa on CPU)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto = bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--packed", action="store_true", help="padding-free batches (cu_seqlens) instead of padding")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    g = parser.add_argument_group("checkpoints")
    g.add_argument("--output", required=True, help="run folder: checkpoint.pt, log.jsonl and the exported model")
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0 = only at the end)")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: OUTPUT/checkpoint.pt) at its exact step")
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps in this invocation; the schedule still "
                        "targets --steps (for time-limited jobs)")
    g.add_argument("--overwrite", action="store_true", help="start afresh even if OUTPUT holds a checkpoint")


def check_input_file(flag: str, path: str) -> None:
    """CLIError unless ``path`` is a non-empty file this process may read."""
    if not os.path.isfile(path):
        raise CLIError(f"{flag} {path!r}: no such file")
    if not os.access(path, os.R_OK):
        raise CLIError(f"{flag} {path!r}: no permission to read it")
    if os.path.getsize(path) == 0:
        raise CLIError(f"{flag} {path!r} is empty (0 bytes)")


def check_common_args(args) -> None:
    for name in ("lr", "weight_decay", "warmup_ratio", "max_grad_norm", "epochs"):
        if not math.isfinite(getattr(args, name)):
            raise CLIError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(args, name)}")
    for name in ("max_seq_len", "batch_size", "grad_accum"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.epochs <= 0:
        raise CLIError(f"--epochs must be > 0, got {args.epochs}")
    if args.lr <= 0:
        raise CLIError(f"--lr must be > 0, got {args.lr}")
    if args.lr >= _FLOAT32_MAX / 10:  # AdamW's first bias-corrected step is 10 x lr, a float32 scalar
        raise CLIError(f"--lr {args.lr} overflows float32 in AdamW's first step (10 x lr must stay below "
                       f"{_FLOAT32_MAX:.3g})")
    for name in ("weight_decay", "max_grad_norm", "skip_nonfinite", "save_every"):
        if getattr(args, name) < 0:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.warmup_ratio < 1:
        raise CLIError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        raise CLIError(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if args.stop_after is not None and args.stop_after < 1:
        raise CLIError(f"--stop-after must be >= 1, got {args.stop_after}")
    if args.num_workers < 0:
        raise CLIError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.resume is not None and args.overwrite:
        raise CLIError("--resume and --overwrite exclude each other")
