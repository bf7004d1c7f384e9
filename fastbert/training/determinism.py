"""What makes ``--resume`` exact: a data order that is a pure function of (seed, epoch, rank), and snapshots of
every random number generator training touches.

``EpochBatches`` gives each rank a seeded, epoch-dependent order of sample indices, so the data position is just
(epoch, micro-batches consumed); ``capture_rng`` / ``restore_rng`` snapshot the python, numpy, torch and CUDA
generators as plain lists and tensors (loadable with ``torch.load(..., weights_only=True)``); ``make_loader``
builds a DataLoader that never draws from the global torch generator.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


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


def make_loader(dataset, index_batches: list[list[int]], collate_fn, num_workers: int):
    """A DataLoader over fixed index batches. It gets its own generator so that creating it never draws from the
    global torch RNG (which drives dropout, and must continue identically after a resume)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=index_batches, collate_fn=collate_fn,
                                       num_workers=num_workers, generator=torch.Generator(),
                                       persistent_workers=False)
