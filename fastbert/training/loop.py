"""The optimisation loop both entry points share, and the policies around it.

* ``prepare_training``: device, DDP wrapper, AdamW without weight decay on biases and LayerNorm weights, linear
  warmup then linear decay to 0, and the restore of model / optimizer / schedule / position / RNG on resume.
* Precision: bf16 autocast on CUDA, fp32 on CPU (``autocast_dtype_for``); the attention path a device defaults to.
* ``TrainLoop``: gradient accumulation (DDP ``no_sync`` between syncs), gradient clipping, a tqdm bar with loss /
  accuracy / real tokens per second, a JSON-lines log and periodic checkpoints. Two guards:
  - non-finite: a step whose loss or gradient norm is NaN/Inf makes no update; it stops the run
    (``NonFiniteError``, exit 3) unless ``--skip-nonfinite N`` still allows a skip (counted over the whole run,
    resumes included). Weights and optimizer moments are checked before every save, so nothing non-finite is
    ever written.
  - SIGINT: the first Ctrl-C lets the current step finish, saves a checkpoint there and stops (``Interrupted``,
    exit 130); a second one interrupts at once (the previous checkpoint stays valid).
* ``fit``: the whole of training for an entry point: build, log, loop, replica check.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable

import torch

from .checkpoint import (CHECKPOINT_NAME, CheckpointFile, checkpoint_state, first_nonfinite, optimizer_tensors,
                         prepare_log)
from .determinism import EpochBatches, capture_rng, restore_rng, seed_everything
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, replicas_in_sync
from .errors import CLIError, Interrupted, NonFiniteError


@dataclasses.dataclass
class LoopPosition:
    """Where training stands: optimizer steps done, the data position (epoch, micro-batches consumed in it), and
    how many steps were skipped for a non-finite loss or gradient norm."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped: int = 0


# ----------------------------------------------------------------------------------------------------------------
# optimisation, precision
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


def total_steps_for(args, batches: EpochBatches) -> int:
    """--steps, or --epochs worth of optimizer steps; CLIError when the data cannot fill one step."""
    if len(batches) // args.grad_accum == 0:
        raise CLIError(f"not enough data for one optimizer step: {batches.num_samples} examples, batch size "
                       f"{batches.batch_size} x {args.grad_accum} accumulation x {batches.world_size} processes")
    if args.steps is not None:
        return args.steps
    return max(1, int(math.floor(args.epochs * (len(batches) // args.grad_accum))))


def autocast_dtype_for(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 autocast on CUDA ("auto" or "bf16"); fp32 elsewhere. bf16 on CPU is refused (slow, untested)."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16
    if precision == "bf16":
        raise CLIError("--precision bf16 needs a CUDA device (CPU runs in fp32)")
    return None


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


# ----------------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------------
class _StopRequest:
    """While active (and only if SIGINT still has Python's default handler, in the main thread), the first SIGINT
    just sets ``requested``; the handler is then put back, so a second SIGINT raises KeyboardInterrupt at once."""

    requested = False
    _installed = False

    def __enter__(self) -> "_StopRequest":
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _grad_norm(model: torch.nn.Module, max_grad_norm: float) -> torch.Tensor:
    """The total L2 norm of the gradients (clipped to ``max_grad_norm`` when > 0; the norm returned is the one
    before clipping)."""
    if max_grad_norm > 0:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    norms = [torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32) for p in model.parameters()
             if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


class TrainLoop:
    """The optimisation loop of both entry points.

    ``compute(model, batch) -> (loss, correct, labelled, tokens)`` runs one micro-batch forward (under autocast)
    and returns the mean loss tensor plus the accuracy counts and real-token count as 0-d tensors.
    ``make_batches(epoch, index_batches) -> iterable`` turns the remaining index batches of an epoch into model
    inputs (a DataLoader over the collator). ``on_checkpoint(position, rng_states)`` writes the checkpoint (called
    on rank 0 only, after the weights were found finite; ``rng_states[r]`` is rank r's ``capture_rng()``).
    ``skip_nonfinite``: how many non-finite steps the whole run may skip before stopping (0 = stop at the first).
    """

    def __init__(self, *, model, ddp_model, optimizer, scheduler, dist_info: DistInfo, batches: EpochBatches,
                 make_batches: Callable[[int, list[list[int]]], Iterable], compute: Callable, total_steps: int,
                 grad_accum: int, max_grad_norm: float, autocast_dtype: torch.dtype | None,
                 log_path: str | None, save_every: int, on_checkpoint: Callable[[LoopPosition, list], None],
                 progress: bool, accuracy_name: str = "acc", desc: str = "train", skip_nonfinite: int = 0):
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
        self.skip_nonfinite = skip_nonfinite
        self.last: dict[str, Any] = {}  # the last logged step with a finite loss
        self.tokens_per_s = 0.0
        self._saved_at = 0
        self._window_tokens = 0.0
        self._window_seconds = 0.0
        self._bar = None
        self._log_file = None

    def run(self, position: LoopPosition, stop_after: int | None = None) -> LoopPosition:
        """Train from ``position`` until ``total_steps`` (or ``stop_after`` more steps); returns the final position
        (a checkpoint of it has been written)."""
        from tqdm.auto import tqdm

        usable = (len(self.batches) // self.grad_accum) * self.grad_accum  # whole optimizer steps per epoch only
        if usable == 0:
            raise ValueError("not enough data for one optimizer step (check with total_steps_for first)")
        target = self.total_steps if stop_after is None else min(self.total_steps, position.step + stop_after)
        self.model.train()
        pos = dataclasses.replace(position)
        self._saved_at = pos.step
        self._bar = tqdm(total=self.total_steps, initial=pos.step, desc=self.desc, disable=not self.progress,
                         dynamic_ncols=True, file=sys.stderr)
        self._log_file = open(self.log_path, "a", encoding="utf-8") if (self.log_path and self.dist.is_main) else None
        try:
            with _StopRequest() as stop:
                while pos.step < target:
                    self._run_epoch(pos, target, usable, stop)
            if self._saved_at != pos.step:
                self._checkpoint(pos)
        finally:
            self._bar.close()
            if self._log_file is not None:
                self._log_file.close()
        return pos

    def _run_epoch(self, pos: LoopPosition, target: int, usable: int, stop: _StopRequest) -> None:
        """Train on what is left of epoch ``pos.epoch`` (or up to ``target``); moves ``pos`` along."""
        if pos.batch_in_epoch >= usable:
            pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
        remaining = self.batches.epoch(pos.epoch)[pos.batch_in_epoch:usable]
        micro = 0
        acc = torch.zeros(5, dtype=torch.float64, device=self.dist.device)
        t0 = time.perf_counter()
        for batch in self.make_batches(pos.epoch, remaining):
            micro += 1
            self._accumulate(batch, acc, sync=micro == self.grad_accum)
            if micro < self.grad_accum:
                continue
            stop_all = self._optimizer_step(pos, micro, acc, t0, stop.requested)
            micro = 0
            if pos.step >= target or (self.save_every and pos.step % self.save_every == 0):
                self._checkpoint(pos)
            if stop_all:
                self._interrupted(pos)
            if pos.step >= target:
                return
            t0 = time.perf_counter()
        pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0

    def _accumulate(self, batch, acc: torch.Tensor, sync: bool) -> None:
        """Forward + backward of one micro-batch; adds (loss, correct, labelled, tokens, 1) to ``acc``."""
        ctx = self.ddp_model.no_sync() if (self.dist.distributed and not sync) else contextlib.nullcontext()
        with ctx:
            with self._autocast():
                loss, correct, labelled, tokens = self.compute(self.ddp_model, batch)
            (loss / self.grad_accum).backward()
        acc += torch.stack([loss.detach().double(), correct.double(), labelled.double(), tokens.double(),
                            torch.ones((), dtype=torch.float64, device=acc.device)])

    def _optimizer_step(self, pos: LoopPosition, micro: int, acc: torch.Tensor, t0: float, stop: bool) -> bool:
        """Clip, check, update unless non-finite, log. Every rank decides on the same all-reduced numbers: the
        loss, the gradient norm, and whether any rank was asked to stop (``stop``), which is returned."""
        grad_norm = _grad_norm(self.model, self.max_grad_norm)
        extra = torch.stack([grad_norm.detach().double().to(acc.device),
                             torch.tensor(float(stop), dtype=torch.float64, device=acc.device)])
        loss_sum, correct, labelled, tokens, n_micro, norm_sum, stops = all_reduce_sum(torch.cat([acc, extra]),
                                                                                         self.dist)
        acc.zero_()
        loss, grad_norm_value = loss_sum / n_micro, norm_sum / self.dist.world_size
        lr = self.scheduler.get_last_lr()[0]
        finite = math.isfinite(loss) and math.isfinite(grad_norm_value)
        if finite:
            self.optimizer.step()
        else:
            self._non_finite(pos, loss, grad_norm_value, labelled)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        pos.step += 1
        pos.batch_in_epoch += micro
        self._log(pos, loss if finite else None, correct, labelled, tokens, lr, time.perf_counter() - t0)
        return stops > 0

    def _non_finite(self, pos: LoopPosition, loss: float, grad_norm: float, labelled: float) -> None:
        """Skip the update if the --skip-nonfinite budget allows it, else NonFiniteError."""
        what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {grad_norm}"
        if labelled == 0:  # e.g. MLM batches where no token was drawn for prediction: a mean over nothing
            what += f" (the step's batches hold no labelled position for {self.accuracy_name})"
        step = pos.step + 1
        if pos.skipped < self.skip_nonfinite:
            pos.skipped += 1
            if self.dist.is_main:
                self._bar.write(f"{self.desc}: warning: step {step}: {what}; update skipped ({pos.skipped} of the "
                                f"{self.skip_nonfinite} allowed by --skip-nonfinite)", file=sys.stderr)
            return
        budget = (f" and --skip-nonfinite {self.skip_nonfinite} is used up" if self.skip_nonfinite else "")
        raise NonFiniteError(f"step {step}: {what}{budget}, so training stopped without an update; "
                             f"{self._last_good()}; try a lower --lr, or --skip-nonfinite N to skip such steps")

    def _last_good(self) -> str:
        if self._saved_at == 0:
            return "nothing was saved"
        return f"nothing was saved after step {self._saved_at}, whose checkpoint and any exported model are unchanged"

    def _log(self, pos: LoopPosition, loss: float | None, correct: float, labelled: float, tokens: float,
             lr: float, elapsed: float) -> None:
        self._window_tokens += tokens
        self._window_seconds += elapsed
        self.tokens_per_s = self._window_tokens / max(self._window_seconds, 1e-9)
        record = {"step": pos.step, "epoch": pos.epoch, "loss": loss,
                  self.accuracy_name: ((correct / labelled) if labelled else 0.0) if loss is not None else None,
                  "lr": lr, "tokens": int(tokens), "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1)}
        if loss is None:
            record["skipped"] = "non-finite loss or gradient norm"
        else:
            self.last = record
            self._bar.set_postfix({"loss": f"{loss:.4f}", self.accuracy_name: f"{record[self.accuracy_name]:.3f}",
                                   "tok/s": f"{self.tokens_per_s:,.0f}"}, refresh=False)
        if self._log_file is not None:
            self._log_file.write(json.dumps(record) + "\n")
            self._log_file.flush()
        self._bar.update(1)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=self.autocast_dtype)

    def _checkpoint(self, pos: LoopPosition) -> None:
        """Save ``pos`` (rank 0 writes, every rank's generators included) once the state is known to be finite."""
        state = self.model.state_dict().items()
        bad = first_nonfinite(state) or first_nonfinite(optimizer_tensors(self.optimizer.state_dict()))
        if bad is not None:
            raise NonFiniteError(f"step {pos.step}: {bad} holds NaN or Inf after the update, so it was not saved; "
                                 f"{self._last_good()}; try a lower --lr")
        rng_states = all_gather_objects(capture_rng(), self.dist)
        if self.dist.is_main:
            self.on_checkpoint(dataclasses.replace(pos), rng_states)
        barrier(self.dist)
        self._saved_at = pos.step

    def _interrupted(self, pos: LoopPosition) -> None:
        if self._saved_at != pos.step:
            self._checkpoint(pos)
        raise Interrupted(f"interrupted at step {pos.step} of {self.total_steps}; a checkpoint of that step was "
                          "saved, so --resume continues from it")


# ----------------------------------------------------------------------------------------------------------------
# an entry point's training
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainingJob:
    """What an entry point hands to ``fit``: the model (freshly built or loaded), the verified ``checkpoint`` to
    resume from (or None), the data, and what goes into every checkpoint (``config``: the model's config.json
    dict; ``run_config``: the settings a resume must match; ``extra``: further entries such as the vocabulary)."""

    kind: str
    model: torch.nn.Module
    checkpoint: dict[str, Any] | None
    args: Any
    dist_info: DistInfo
    batches: EpochBatches
    make_batches: Callable[[int, list[list[int]]], Iterable]
    compute: Callable
    total_steps: int
    warmup: int
    config: dict[str, Any]
    run_config: dict[str, Any]
    accuracy_name: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class FitResult:
    position: LoopPosition
    steps_run: int  # optimizer steps taken in this invocation
    last: dict[str, Any]  # the last logged step with a finite loss ({} when no step ran)
    tokens_per_s: float
    in_sync: bool  # replicas bit-identical (always True in one process)


def fit(job: TrainingJob) -> FitResult:
    """Restore or initialise the optimiser state, then train to ``--steps`` / ``--stop-after`` with checkpoints in
    ``OUTPUT/checkpoint.pt`` and the log in ``OUTPUT/log.jsonl``. A run already at its last step trains nothing."""
    args, dist_info = job.args, job.dist_info
    ddp_model, optimizer, scheduler, position = prepare_training(job.model, job.checkpoint, args, dist_info,
                                                                 job.warmup, job.total_steps)
    log_path = prepare_log(args.output, job.checkpoint is not None, position.step, dist_info)
    store = CheckpointFile(os.path.join(args.output, CHECKPOINT_NAME))

    def on_checkpoint(pos: LoopPosition, rng_states: list) -> None:
        store.save(checkpoint_state(job.kind, job.model, optimizer, scheduler, pos, rng_states, job.config,
                                    job.run_config, args, **job.extra))

    loop = TrainLoop(model=job.model, ddp_model=ddp_model, optimizer=optimizer, scheduler=scheduler,
                     dist_info=dist_info, batches=job.batches, make_batches=job.make_batches, compute=job.compute,
                     total_steps=job.total_steps, grad_accum=args.grad_accum, max_grad_norm=args.max_grad_norm,
                     autocast_dtype=autocast_dtype_for(dist_info.device, args.precision), log_path=log_path,
                     save_every=args.save_every, on_checkpoint=on_checkpoint, progress=not args.no_progress,
                     accuracy_name=job.accuracy_name, desc=job.kind, skip_nonfinite=args.skip_nonfinite)
    start = position.step
    if position.step < job.total_steps:
        position = loop.run(position, stop_after=args.stop_after)
    return FitResult(position, position.step - start, loop.last, loop.tokens_per_s,
                     replicas_in_sync(job.model, dist_info))
