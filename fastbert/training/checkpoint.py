"""Everything a run writes to its ``--output`` folder, and the checks on what ``--resume`` reads back.

* ``save_checkpoint`` / ``load_checkpoint``: ``checkpoint.pt``, one dict loadable with
  ``torch.load(..., weights_only=True)`` (tensors, numbers, strings, lists, dicts), written atomically (temporary
  file, fsync, ``os.replace``).
* ``export_pretrained``: the Hugging Face folder (config.json, model.safetensors, vocab.txt,
  tokenizer_config.json), each file replaced atomically.
* ``log.jsonl``: one JSON line per optimizer step; a resumed run keeps the lines up to its step.
* ``check_output_dir`` / ``compare_run_config``: the refusals that keep a run from overwriting what it should not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Sequence

import torch

from .distributed import DistInfo, barrier
from .errors import CLIError, one_line

CHECKPOINT_FORMAT = "fastbert-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


# ----------------------------------------------------------------------------------------------------------------
# atomic files
# ----------------------------------------------------------------------------------------------------------------
def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` then rename over ``path``: readers see the old file or the new one, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)


def write_text(path: str, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def file_fingerprint(path: str) -> str:
    """sha256 of a file's bytes (identifies the corpus a checkpoint was trained on)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------------
def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def resume_path(args) -> str | None:
    """The checkpoint ``--resume`` names (default: OUTPUT/checkpoint.pt), or None without --resume."""
    if args.resume is None:
        return None
    return args.resume or os.path.join(args.output, CHECKPOINT_NAME)


def load_checkpoint(path: str, kind: str) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` for the entry point ``kind`` ("pretrain" / "finetune")."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(path):
        raise CLIError(f"--resume: no checkpoint at {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise CLIError(f"--resume: {path!r} is not a readable fastbert checkpoint ({one_line(exc)[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CLIError(f"--resume: {path!r} is not a fastbert checkpoint")
    if state.get("kind") != kind:
        raise CLIError(f"--resume: {path!r} is a {state.get('kind')} checkpoint, not a {kind} one")
    return state


def checkpoint_state(kind: str, model, optimizer, scheduler, position, rng_states, config: dict,
                     run_config: dict, args, **extra: Any) -> dict[str, Any]:
    """Everything --resume needs to continue at the exact step (``position`` a LoopPosition), as one dict."""
    return {
        "format": CHECKPOINT_FORMAT, "kind": kind, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "position": dataclasses.asdict(position), "rng": rng_states, "config": config, "run": run_config,
        "args": dict(vars(args)), **extra,
    }


def comparable_config(config_dict: dict[str, Any]) -> dict[str, Any]:
    """A model config as resume compares it: the attention path and the architectures list may change."""
    from ..config import JSON_ATTN_KEY

    return {k: v for k, v in config_dict.items() if k not in (JSON_ATTN_KEY, "attn_implementation", "architectures")}


def compare_run_config(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """CLIError naming the fields where a checkpoint's run configuration differs from this run's."""
    diffs = [f"{k}={saved.get(k)!r} in the checkpoint vs {current.get(k)!r} now"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise CLIError(f"--resume: {path!r} was written with another configuration: {'; '.join(diffs[:3])}{more}")


def check_output_dir(output: str, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over an existing checkpoint (nothing is overwritten by accident)."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise CLIError(f"--output {output!r} exists and is not a directory")
    if not resume and not overwrite and os.path.isfile(os.path.join(output, CHECKPOINT_NAME)):
        raise CLIError(f"--output {output!r} already holds a checkpoint: pass --resume to continue it or "
                       "--overwrite to start again")


# ----------------------------------------------------------------------------------------------------------------
# the exported model
# ----------------------------------------------------------------------------------------------------------------
def export_pretrained(model, folder: str, vocab_tokens: Sequence[str], tokenizer_config: dict | None = None) -> None:
    """save_pretrained-style export (config.json, model.safetensors, vocab.txt, tokenizer_config.json), each file
    replaced atomically so the folder always holds a loadable model."""
    import tempfile

    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        model.save_pretrained(tmp)
        with open(os.path.join(tmp, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in vocab_tokens))
        with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer", **(tokenizer_config or {})}, f,
                      indent=2)
        umask = os.umask(0)
        os.umask(umask)
        for name in ("vocab.txt", "tokenizer_config.json", "model.safetensors", "config.json"):
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask)  # temporary files may be private; exports are not
            os.replace(os.path.join(tmp, name), os.path.join(folder, name))
    _fsync_dir(folder)


# ----------------------------------------------------------------------------------------------------------------
# the log
# ----------------------------------------------------------------------------------------------------------------
def prepare_log(output: str, resuming: bool, step: int, dist_info: DistInfo) -> str:
    """The run's log.jsonl path: a resumed run keeps the lines up to ``step``, a fresh run starts it anew."""
    log_path = os.path.join(output, LOG_NAME)
    if dist_info.is_main:
        os.makedirs(output, exist_ok=True)
        if resuming:
            truncate_log(log_path, step)
        elif os.path.exists(log_path):
            os.remove(log_path)
    barrier(dist_info)
    return log_path


def truncate_log(path: str, last_step: int) -> None:
    """Drop log lines after ``last_step`` (a resumed run re-logs the steps after its checkpoint)."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= last_step]
    write_text(path, "".join(lines))


def read_log(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
