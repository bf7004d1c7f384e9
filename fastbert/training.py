"""Shared machinery of the ``fastbert.pretrain`` and ``fastbert.finetune`` entry points.

* CLI errors: ``CLIError`` carries a one-line message; ``run_cli`` prints it to stderr and returns exit code 2.
* Distributed: ``setup_distributed`` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK (nccl on CUDA, gloo on CPU).
* Exact resume: ``EpochBatches`` gives each rank a seeded, epoch-dependent order of sample indices, so the data
  position is just (epoch, micro-batches consumed); ``capture_rng`` / ``restore_rng`` snapshot python, numpy, torch
  and CUDA generators; ``save_checkpoint`` writes one file atomically (temporary file, fsync, ``os.replace``).
* Optimisation: AdamW without weight decay on biases and LayerNorm weights; linear warmup then linear decay to 0.
* ``TrainLoop``: the optimisation loop both entry points share (gradient accumulation with DDP ``no_sync``, bf16
  autocast on CUDA, gradient clipping, a tqdm bar with loss / accuracy / real tokens per second, a JSON-lines log,
  periodic checkpoints).

A checkpoint is a dict loadable with ``torch.load(..., weights_only=True)`` (tensors, numbers, strings, lists, dicts).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

CHECKPOINT_FORMAT = "fastbert-checkpoint-v1"
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------
class CLIError(Exception):
    """Bad input found before anything is written: reported as one line on stderr, exit code 2."""


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; a CLIError (or a failed distributed start) becomes ``prog: error: ...`` and exit code 2."""
    try:
        return body()
    except CLIError as exc:
        if os.environ.get("RANK", "0") == "0":  # every rank fails the same way; one of them says so
            print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        teardown_distributed()


# ----------------------------------------------------------------------------------------------------------------
# devices, distributed
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None) -> DistInfo:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group: nccl with one GPU per local
    rank on CUDA, gloo on CPU. ``device`` None = CUDA when available, else CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise CLIError(f"--device {name!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: CUDA is not available on this machine")
        if world_size > 1 or dev.index is None:
            dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(dist_info: DistInfo) -> None:
    if dist_info.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_gather_objects(obj: Any, dist_info: DistInfo) -> list:
    if not dist_info.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, dist_info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist_info.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_on_all_ranks(body: Callable[[], Any], dist_info: DistInfo) -> Any:
    """Run ``body`` on every rank; if any rank raised CLIError, every rank raises it (rank 0's message first), so
    no rank is left waiting in a collective."""
    error = None
    result = None
    try:
        result = body()
    except CLIError as exc:
        error = one_line(exc)
    errors = [e for e in all_gather_objects(error, dist_info) if e]
    if errors:
        raise CLIError(errors[0])
    return result


# ----------------------------------------------------------------------------------------------------------------
# random number generators
# ----------------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The state of every generator training touches, as plain lists/tensors (weights_only-loadable)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------------------------------------
# data order
# ----------------------------------------------------------------------------------------------------------------
class EpochBatches:
    """Micro-batches of sample indices for one rank: epoch e uses a permutation seeded by (seed, e); rank r takes
    every world_size-th index of the first ``n - n % world_size`` (every rank gets the same count), then cuts
    full batches (the ragged tail is dropped). The order depends only on (seed, epoch, rank, world_size), so a
    resumed run skips the batches already consumed and sees exactly the same ones afterwards."""

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle

    def __len__(self) -> int:
        return (self.num_samples // self.world_size) // self.batch_size

    def epoch(self, epoch: int) -> list[list[int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed % 2**32, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        per_rank = self.num_samples // self.world_size
        mine = order[: per_rank * self.world_size][self.rank::self.world_size]
        n = len(self) * self.batch_size
        return [mine[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]


# ----------------------------------------------------------------------------------------------------------------
# optimisation
# ----------------------------------------------------------------------------------------------------------------
def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999),
                    eps: float = 1e-6) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights (1-D parameters) get no weight decay, as in BERT. Tied parameters are
    counted once."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.dim() < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def warmup_linear_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """LambdaLR: lr rises linearly from 0 over ``warmup_steps``, then decays linearly to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_warmup(warmup_steps: int | None, warmup_ratio: float, total_steps: int) -> int:
    if warmup_steps is not None:
        return warmup_steps
    return int(math.ceil(warmup_ratio * total_steps))


# ----------------------------------------------------------------------------------------------------------------
# files
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


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


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


def prepare_log(output: str, resuming: bool, position: "LoopPosition", dist_info: DistInfo) -> str:
    """The run's log.jsonl path: a resumed run keeps the lines up to its step, a fresh run starts it anew."""
    log_path = os.path.join(output, LOG_NAME)
    if dist_info.is_main:
        os.makedirs(output, exist_ok=True)
        if resuming:
            truncate_log(log_path, position.step)
        elif os.path.exists(log_path):
            os.remove(log_path)
    barrier(dist_info)
    return log_path


def checkpoint_state(kind: str, model, optimizer, scheduler, pos: "LoopPosition", rng_states, config: dict,
                     run_config: dict, args, **extra: Any) -> dict[str, Any]:
    """Everything --resume needs to continue at the exact step, as one dict for save_checkpoint."""
    return {
        "format": CHECKPOINT_FORMAT, "kind": kind, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "position": {"step": pos.step, "epoch": pos.epoch, "batch_in_epoch": pos.batch_in_epoch},
        "rng": rng_states, "config": config, "run": run_config, "args": dict(vars(args)), **extra,
    }


def comparable_config(config_dict: dict[str, Any]) -> dict[str, Any]:
    """A model config as resume compares it: the attention path and the architectures list may change."""
    from .config import JSON_ATTN_KEY

    return {k: v for k, v in config_dict.items() if k not in (JSON_ATTN_KEY, "attn_implementation", "architectures")}


def compare_run_config(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """CLIError naming the fields where a checkpoint's run configuration differs from this run's."""
    diffs = [f"{k}={saved.get(k)!r} in the checkpoint vs {current.get(k)!r} now"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise CLIError(f"--resume: {path!r} was written with another configuration: {'; '.join(diffs[:3])}{more}")


def file_fingerprint(path: str) -> str:
    """sha256 of a file's bytes (identifies the corpus a checkpoint was trained on)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_dir(output: str, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over an existing checkpoint (nothing is overwritten by accident)."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise CLIError(f"--output {output!r} exists and is not a directory")
    if not resume and not overwrite and os.path.isfile(os.path.join(output, CHECKPOINT_NAME)):
        raise CLIError(f"--output {output!r} already holds a checkpoint: pass --resume to continue it or "
                       "--overwrite to start again")


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


def truncate_log(path: str, last_step: int) -> None:
    """Drop log lines after ``last_step`` (a resumed run re-logs the steps after its checkpoint)."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= last_step]
    atomic_write(path, lambda tmp: open(tmp, "w", encoding="utf-8").writelines(lines))


def read_log(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoopPosition:
    """Where training stands: optimizer steps done, and the data position (epoch, micro-batches consumed in it)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def prepare_training(model: torch.nn.Module, checkpoint: dict[str, Any] | None, args, dist_info: DistInfo,
                     warmup: int, total_steps: int):
    """Move ``model`` to the run's device, wrap it for DDP, build AdamW + the warmup/linear-decay schedule, and
    restore model, optimizer, scheduler, loop position and RNG from ``checkpoint`` when resuming.

    Returns (model to call, optimizer, scheduler, LoopPosition)."""
    device = dist_info.device
    model.to(device)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    ddp_model = model
    if dist_info.distributed:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    scheduler = warmup_linear_decay(optimizer, warmup, total_steps)
    position = LoopPosition()
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        position = LoopPosition(**checkpoint["position"])
        restore_rng(checkpoint["rng"][dist_info.rank])
    elif dist_info.rank:
        seed_everything(args.seed + 1_000_003 * dist_info.rank)  # own dropout stream per rank
    return ddp_model, optimizer, scheduler, position


@dataclasses.dataclass
class StepStats:
    """Sums over one optimizer step's micro-batches (all ranks): loss (weighted by micro-batch count), correct
    predictions and labelled positions for the accuracy, and real (non-padding) tokens."""

    loss: float = 0.0
    correct: float = 0.0
    labelled: float = 0.0
    tokens: float = 0.0
    micro_batches: float = 0.0


class TrainLoop:
    """The optimisation loop of both entry points.

    ``compute(model, batch) -> (loss, correct, labelled, tokens)`` runs one micro-batch forward (under autocast)
    and returns the mean loss tensor plus the accuracy counts and real-token count as 0-d tensors.
    ``make_batches(epoch, index_batches) -> iterable`` turns the remaining index batches of an epoch into model
    inputs (a DataLoader over the collator). ``on_checkpoint(position, rng_states)`` writes the checkpoint (called on rank 0
    only; ``rng_states[r]`` is rank r's ``capture_rng()``).
    """

    def __init__(self, *, model, ddp_model, optimizer, scheduler, dist_info: DistInfo, batches: EpochBatches,
                 make_batches: Callable[[int, list[list[int]]], Iterable], compute: Callable, total_steps: int,
                 grad_accum: int, max_grad_norm: float, autocast_dtype: torch.dtype | None,
                 log_path: str | None, save_every: int, on_checkpoint: Callable[[LoopPosition], None],
                 progress: bool, accuracy_name: str = "acc", desc: str = "train"):
        self.model = model
        self.ddp_model = ddp_model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.dist = dist_info
        self.batches = batches
        self.make_batches = make_batches
        self.compute = compute
        self.total_steps = total_steps
        self.grad_accum = grad_accum
        self.max_grad_norm = max_grad_norm
        self.autocast_dtype = autocast_dtype
        self.log_path = log_path
        self.save_every = save_every
        self.on_checkpoint = on_checkpoint
        self.progress = progress and dist_info.is_main
        self.accuracy_name = accuracy_name
        self.desc = desc
        self.last: dict[str, Any] = {}
        self.tokens_per_s = 0.0

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=self.autocast_dtype)

    def _reduce(self, stats: torch.Tensor) -> list[float]:
        if self.dist.distributed:
            import torch.distributed as dist

            dist.all_reduce(stats)
        return stats.tolist()

    def _checkpoint(self, pos: LoopPosition) -> None:
        rng_states = all_gather_objects(capture_rng(), self.dist)  # every rank's generators, saved by rank 0
        if self.dist.is_main:
            self.on_checkpoint(dataclasses.replace(pos), rng_states)
        barrier(self.dist)

    def run(self, position: LoopPosition, stop_after: int | None = None) -> LoopPosition:
        """Train from ``position`` until ``total_steps`` (or ``stop_after`` more steps); returns the final position
        (a checkpoint of it has been written)."""
        from tqdm.auto import tqdm

        steps_per_epoch = len(self.batches) // self.grad_accum
        if steps_per_epoch == 0:
            raise ValueError("not enough data for one optimizer step (check with total_steps_for first)")
        target = self.total_steps if stop_after is None else min(self.total_steps, position.step + stop_after)
        bar = tqdm(total=self.total_steps, initial=position.step, desc=self.desc, disable=not self.progress,
                   dynamic_ncols=True, file=sys.stderr)
        self.model.train()
        pos = dataclasses.replace(position)
        saved_at = pos.step
        window_tokens, window_time = 0.0, 0.0
        log_file = open(self.log_path, "a", encoding="utf-8") if (self.log_path and self.dist.is_main) else None
        try:
            while pos.step < target:
                usable = steps_per_epoch * self.grad_accum  # whole optimizer steps per epoch only
                if pos.batch_in_epoch >= usable:
                    pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
                remaining = self.batches.epoch(pos.epoch)[pos.batch_in_epoch:usable]
                micro = 0
                acc = torch.zeros(5, dtype=torch.float64, device=self.dist.device)
                t0 = time.perf_counter()
                for batch in self.make_batches(pos.epoch, remaining):
                    micro += 1
                    sync = micro == self.grad_accum
                    ctx = (self.ddp_model.no_sync() if (self.dist.distributed and not sync)
                           else contextlib.nullcontext())
                    with ctx:
                        with self._autocast():
                            loss, correct, labelled, tokens = self.compute(self.ddp_model, batch)
                        (loss / self.grad_accum).backward()
                    acc += torch.stack([loss.detach().double(), correct.double(), labelled.double(),
                                        tokens.double(), torch.ones((), dtype=torch.float64,
                                                                    device=acc.device)])
                    if not sync:
                        continue
                    if self.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
                    lr = self.scheduler.get_last_lr()[0]
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    pos.step += 1
                    pos.batch_in_epoch += micro
                    micro = 0
                    loss_sum, correct, labelled, tokens, n_micro = self._reduce(acc)
                    acc.zero_()
                    elapsed = time.perf_counter() - t0
                    window_tokens += tokens
                    window_time += elapsed
                    self.tokens_per_s = window_tokens / max(window_time, 1e-9)
                    record = {"step": pos.step, "epoch": pos.epoch, "loss": loss_sum / n_micro,
                              self.accuracy_name: (correct / labelled) if labelled else 0.0, "lr": lr,
                              "tokens": int(tokens), "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1)}
                    self.last = record
                    if log_file is not None:
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                    bar.set_postfix({"loss": f"{record['loss']:.4f}",
                                     self.accuracy_name: f"{record[self.accuracy_name]:.3f}",
                                     "tok/s": f"{self.tokens_per_s:,.0f}"}, refresh=False)
                    bar.update(1)
                    if pos.step >= target or (self.save_every and pos.step % self.save_every == 0):
                        self._checkpoint(pos)
                        saved_at = pos.step
                    if pos.step >= target:
                        break
                    t0 = time.perf_counter()
                else:
                    pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
            if saved_at != pos.step:
                self._checkpoint(pos)
        finally:
            bar.close()
            if log_file is not None:
                log_file.close()
        return pos


def replicas_in_sync(model: torch.nn.Module, dist_info: DistInfo) -> bool:
    """True when every rank holds bit-identical parameters (checked through a float64 checksum per tensor)."""
    if not dist_info.distributed:
        return True
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    gathered = all_gather_objects(sums.tolist(), dist_info)
    return all(g == gathered[0] for g in gathered)


def autocast_dtype_for(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on CUDA ("auto" or "bf16"); fp32 elsewhere. bf16 on CPU is refused (slow, untested)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16
    if precision == "bf16":
        raise CLIError("--precision bf16 needs a CUDA device (CPU runs in fp32)")
    return None


def default_attn(device: torch.device) -> str:
    """Fused Triton kernels on CUDA; PyTorch SDPA on CPU (the fused path would only fall back to references)."""
    return "fused" if device.type == "cuda" else "sdpa"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: x)" only for real defaults that the help text does not already describe."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    g.add_argument("--attn", choices=("eager", "sdpa", "fused"), default=None,
                   help="attention implementation (default: fused on CUDA, sdpa on CPU)")
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


def check_common_args(args) -> None:
    for name in ("max_seq_len", "batch_size", "grad_accum"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.epochs <= 0:
        raise CLIError(f"--epochs must be > 0, got {args.epochs}")
    if args.lr <= 0:
        raise CLIError(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.warmup_ratio < 1:
        raise CLIError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.stop_after is not None and args.stop_after < 1:
        raise CLIError(f"--stop-after must be >= 1, got {args.stop_after}")
    if args.num_workers < 0:
        raise CLIError(f"--num-workers must be >= 0, got {args.num_workers}")
    if args.resume is not None and args.overwrite:
        raise CLIError("--resume and --overwrite exclude each other")


def total_steps_for(args, batches: EpochBatches) -> int:
    """--steps, or --epochs worth of optimizer steps; CLIError when the data cannot fill one step."""
    if len(batches) // args.grad_accum == 0:
        raise CLIError(f"not enough data for one optimizer step: {batches.num_samples} examples, batch size "
                       f"{batches.batch_size} x {args.grad_accum} accumulation x {batches.world_size} processes")
    if args.steps is not None:
        return args.steps
    return max(1, int(math.floor(args.epochs * (len(batches) // args.grad_accum))))


def make_loader(dataset, index_batches: list[list[int]], collate_fn, num_workers: int):
    """A DataLoader over fixed index batches. It gets its own generator so that creating it never draws from the
    global torch RNG (which drives dropout, and must continue identically after a resume)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=index_batches, collate_fn=collate_fn,
                                       num_workers=num_workers, generator=torch.Generator(),
                                       persistent_workers=False)
