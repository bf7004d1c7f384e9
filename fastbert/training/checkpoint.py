"""Everything a run writes to its ``--output`` folder, and the checks on what ``--resume`` reads back.

* ``CheckpointFile``: ``checkpoint.pt`` (a dict loadable with ``torch.load(..., weights_only=True)``: tensors,
  numbers, strings, lists, dicts) and its manifest ``checkpoint.pt.sha256`` (JSON: size and sha256 of the
  checkpoint, and of the one it replaced). A save writes a temporary file (fsync), then the manifest, then
  renames the file into place, so a crash at any point leaves a checkpoint that one of the manifest's two
  entries verifies. ``load`` checks the size and sha256 before ``torch.load`` and every floating tensor after it:
  a corrupted, truncated, empty or non-finite checkpoint is a one-sentence CLIError and is never trained on.
* ``export_pretrained``: the Hugging Face folder (config.json, model.safetensors, vocab.txt,
  tokenizer_config.json), each file replaced atomically.
* ``log.jsonl``: one JSON line per optimizer step; a resumed run keeps the lines up to its step.
* ``check_output_dir`` / ``compare_run_config``: the refusals that keep a run from overwriting what it should not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any, Callable, Iterable, Sequence

import torch

from .distributed import DistInfo, barrier
from .errors import CLIError, OutputError, reason

CHECKPOINT_FORMAT = "fastbert-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"
MANIFEST_SUFFIX = ".sha256"
MANIFEST_FORMAT = "fastbert-checkpoint-manifest-v1"
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


def _temporary_name(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` then rename over ``path``: readers see the old file or the new one, never a torn one.
    A failed write (disk full, permissions) is an OutputError and leaves the old file as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = _temporary_name(path)
    try:
        os.makedirs(folder, exist_ok=True)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"could not write {path!r} ({exc.strerror or reason(exc)}); any previous version of it "
                          "is unchanged") from None
    except Exception as exc:
        if _cut_by_interrupt(exc):  # Ctrl-C inside the writer, whose clean-up then failed on the half-written file
            raise KeyboardInterrupt from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(folder)


def _cut_by_interrupt(exc: BaseException) -> bool:
    """Did a KeyboardInterrupt start the chain of exceptions that ended in ``exc``? (torch.save's zip writer turns
    an interrupt into a RuntimeError when it closes the torn file.)"""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__context__
    return False


def write_text(path: str, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def file_digest(path: str) -> dict[str, Any]:
    """{"bytes": size, "sha256": hex digest} of a file's contents."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


def file_fingerprint(path: str) -> str:
    """sha256 of a file's bytes (identifies the corpus a checkpoint was trained on)."""
    return file_digest(path)["sha256"]


class _HashingWriter(io.RawIOBase):
    """A write-only file object that hashes what passes through it and keeps the first OSError: torch.save
    reports a failed write as a RuntimeError about stream positions, which says nothing about a full disk."""

    def __init__(self, file):
        self.file = file
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


def first_nonfinite(named_tensors: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating tensor holding NaN or Inf, or None."""
    for name, value in named_tensors:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def optimizer_tensors(optimizer_state: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    """(name, tensor) of an optimizer state_dict's per-parameter state (AdamW's moments and step counts)."""
    for index, slots in optimizer_state.get("state", {}).items():
        for key, value in slots.items():
            yield f"optimizer state {index}.{key}", value


# ----------------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------------
class CheckpointFile:
    """``path`` (a checkpoint) and ``path + ".sha256"`` (its manifest)."""

    def __init__(self, path: str):
        if os.path.isdir(path):
            path = os.path.join(path, CHECKPOINT_NAME)
        self.path = path
        self.manifest_path = path + MANIFEST_SUFFIX
        self._on_disk: dict[str, Any] | None = None  # digest of the file now at ``path``, once known

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state``: temporary file (hashed while written, fsync), manifest naming it and the checkpoint it
        replaces, rename. A failure (OutputError) or an interrupt at any point keeps the previous checkpoint."""
        tmp = _temporary_name(self.path)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            entry = self._write_hashed(state, tmp)
            previous = self._on_disk
            if previous is None and os.path.isfile(self.path):
                previous = file_digest(self.path)
            manifest = {"format": MANIFEST_FORMAT, "file": os.path.basename(self.path), **entry,
                        "previous": previous}
            write_text(self.manifest_path, json.dumps(manifest, indent=2) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise OutputError(f"could not write the checkpoint {self.path!r} ({exc.strerror or reason(exc)}); "
                              "the previous checkpoint is unchanged") from None
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        self._on_disk = entry

    @staticmethod
    def _write_hashed(state: dict[str, Any], tmp: str) -> dict[str, Any]:
        with open(tmp, "wb") as f:
            writer = _HashingWriter(f)
            try:
                torch.save(state, writer)
            except RuntimeError as exc:
                if _cut_by_interrupt(exc):  # Ctrl-C inside torch.save, whose zip writer then failed to close
                    raise KeyboardInterrupt from None
                if writer.error is not None:
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        return {"bytes": writer.size, "sha256": writer.sha256.hexdigest()}

    def _read_manifest(self) -> dict[str, Any]:
        if not os.path.isfile(self.manifest_path):
            raise CLIError(f"--resume: {self.path!r} cannot be verified because its manifest "
                           f"{self.manifest_path!r}, written beside every checkpoint, is missing")
        try:
            with open(self.manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
            ok = manifest["format"] == MANIFEST_FORMAT and int(manifest["bytes"]) >= 0 and manifest["sha256"]
        except (OSError, ValueError, TypeError, KeyError):
            ok = False
        if not ok:
            raise CLIError(f"--resume: the manifest {self.manifest_path!r} is damaged, so {self.path!r} cannot be "
                           "verified")
        return manifest

    def verify(self) -> None:
        """CLIError (one sentence) unless ``path`` is exactly a checkpoint its manifest lists."""
        if not os.path.isfile(self.path):
            raise CLIError(f"--resume: no checkpoint at {self.path!r}")
        if os.path.getsize(self.path) == 0:
            raise CLIError(f"--resume: {self.path!r} is empty (0 bytes), so it was truncated or never finished")
        manifest = self._read_manifest()
        listed = [m for m in (manifest, manifest.get("previous")) if isinstance(m, dict)]
        actual = file_digest(self.path)
        if any(m.get("bytes") == actual["bytes"] and m.get("sha256") == actual["sha256"] for m in listed):
            self._on_disk = actual
            return
        if all(actual["bytes"] < m.get("bytes", 0) for m in listed):
            raise CLIError(f"--resume: {self.path!r} is truncated ({actual['bytes']} bytes of the "
                           f"{manifest['bytes']} written)")
        raise CLIError(f"--resume: {self.path!r} is corrupted (sha256 mismatch: the file changed after it was "
                       "written)")

    def load(self, kind: str) -> dict[str, Any]:
        """The verified checkpoint of entry point ``kind`` ("pretrain" / "finetune"); CLIError otherwise."""
        self.verify()
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise CLIError(f"--resume: {self.path!r} is not a readable fastbert checkpoint ({reason(exc)})") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CLIError(f"--resume: {self.path!r} is not a fastbert checkpoint")
        if state.get("kind") != kind:
            raise CLIError(f"--resume: {self.path!r} is a {state.get('kind')} checkpoint, not a {kind} one")
        bad = first_nonfinite([*state["model"].items(), *optimizer_tensors(state["optimizer"])])
        if bad is not None:
            raise CLIError(f"--resume: {self.path!r} holds NaN or Inf values (in {bad}), so training cannot "
                           "continue from it")
        return state


def resume_source(args) -> CheckpointFile | None:
    """The checkpoint ``--resume`` names (default: OUTPUT/checkpoint.pt), or None without --resume."""
    if args.resume is None:
        return None
    return CheckpointFile(args.resume or os.path.join(args.output, CHECKPOINT_NAME))


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
    """Refuse an output folder that cannot be written, or a fresh run over an existing checkpoint (nothing is
    overwritten by accident). Creates nothing."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise CLIError(f"--output {output!r} exists and is not a directory")
    existing = os.path.abspath(output)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise CLIError(f"--output {output!r} cannot be created because {existing!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"--output {output!r} cannot be written: no write permission in {existing!r}")
    if not resume and not overwrite and os.path.isfile(os.path.join(output, CHECKPOINT_NAME)):
        raise CLIError(f"--output {output!r} already holds a checkpoint: pass --resume to continue it or "
                       "--overwrite to start again")


# ----------------------------------------------------------------------------------------------------------------
# the exported model
# ----------------------------------------------------------------------------------------------------------------
def export_pretrained(model, folder: str, vocab_tokens: Sequence[str], tokenizer_config: dict | None = None) -> None:
    """save_pretrained-style export (config.json, model.safetensors, vocab.txt, tokenizer_config.json). Every file
    is written to a temporary folder first, then each is renamed into place, so the folder always holds a loadable
    model; a failed write (OutputError) leaves the previous export untouched."""
    import tempfile

    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
            _write_export(model, tmp, vocab_tokens, tokenizer_config)
            umask = os.umask(0)
            os.umask(umask)
            for name in ("vocab.txt", "tokenizer_config.json", "model.safetensors", "config.json"):
                os.chmod(os.path.join(tmp, name), 0o666 & ~umask)  # temporary files may be private; exports are not
                os.replace(os.path.join(tmp, name), os.path.join(folder, name))
    except OSError as exc:
        raise OutputError(f"could not export the model to {folder!r} ({exc.strerror or reason(exc)}); the "
                          "previously exported files are unchanged") from None
    _fsync_dir(folder)


def _write_export(model, folder: str, vocab_tokens: Sequence[str], tokenizer_config: dict | None) -> None:
    from safetensors import SafetensorError

    try:
        model.save_pretrained(folder)
    except SafetensorError as exc:  # safetensors reports a full disk as its own error type
        raise OSError(reason(exc)) from None
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in vocab_tokens))
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer", **(tokenizer_config or {})}, f,
                  indent=2)


# ----------------------------------------------------------------------------------------------------------------
# the log
# ----------------------------------------------------------------------------------------------------------------
def prepare_log(output: str, resuming: bool, step: int, dist_info: DistInfo) -> str:
    """The run's log.jsonl path: a resumed run keeps the lines up to ``step``, a fresh run starts it anew."""
    log_path = os.path.join(output, LOG_NAME)
    if dist_info.is_main:
        try:
            os.makedirs(output, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"could not create --output {output!r} ({exc.strerror or reason(exc)})") from None
        if resuming:
            truncate_log(log_path, step)
        elif os.path.exists(log_path):
            os.remove(log_path)
    barrier(dist_info)
    return log_path


def _records(lines: Iterable[str]) -> Iterable[tuple[str, dict[str, Any]]]:
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line torn by a killed process: the step is re-run and re-logged after a resume
            continue
        if isinstance(record, dict):
            yield line, record


def truncate_log(path: str, last_step: int) -> None:
    """Drop log lines after ``last_step`` (a resumed run re-logs the steps after its checkpoint)."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        kept = [line if line.endswith("\n") else line + "\n"
                for line, record in _records(f) if record.get("step", 0) <= last_step]
    write_text(path, "".join(kept))


def read_log(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [record for _, record in _records(f)]
