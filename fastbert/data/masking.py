"""MLM masking (BERT's 80/10/10 recipe) on the C++ extension.

For each sequence, the candidates are the positions whose id is neither special nor the mask id; padding is
never a candidate. Each candidate group (a token, or a whole word with ``whole_word_mask``) is chosen with
probability ``mlm_probability`` (or, with ``exact_count``, exactly ``min(max(1, round(p * n)),
max_predictions_per_seq)`` tokens are chosen, as google-research/bert create_pretraining_data.py does).
A chosen token becomes the mask id, a uniformly random non-special id, or stays, with probabilities
``split = (mask, random, keep)``; its label is the original id, every other label is -100.

Randomness: sequence ``b`` draws from its own counter-based stream keyed by ``(seed, streams[b])`` (default
``streams[b] = b``), so results are identical for any ``num_threads``. The exact algorithm is documented in
csrc/masking.h and reproduced by fastbert/data/reference.py.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..config import IGNORE_INDEX
from ._checks import check_int, check_probability, check_split
from ._ext import _C

MASK64 = (1 << 64) - 1


def masking_config(*, vocab_size: int, mask_token_id: int, special_ids: Sequence[int],
                   mlm_probability: float = 0.15, split: Sequence[float] = (0.8, 0.1, 0.1),
                   whole_word_mask: bool = False, continuation_table=None, exact_count: bool = False,
                   max_predictions_per_seq: int | None = None) -> "_C.MaskingConfig":
    """Validated masking options (ValueError / TypeError naming the bad argument).

    Args:
        vocab_size: ids must lie in [0, vocab_size).
        mask_token_id: the [MASK] id; must not be one of ``special_ids``.
        special_ids: ids never masked (e.g. [CLS], [SEP], [PAD], [UNK]); also never drawn as random replacements.
        mlm_probability: p in [0, 1].
        split: (mask, random, keep) probabilities of a chosen token, summing to 1 (HF's mask_replace_prob,
            random_replace_prob and the rest).
        whole_word_mask: mask continuation pieces together with the piece before them.
        continuation_table: bool [vocab_size], True for continuation pieces (continuation_table_from_vocab).
        exact_count: choose round(p * candidates) tokens (at least 1) instead of independent draws.
        max_predictions_per_seq: cap of the exact count (None: no cap).
    """
    vocab_size = check_int("vocab_size", vocab_size, minimum=1)
    mask_token_id = check_int("mask_token_id", mask_token_id)
    if mask_token_id is None or not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id must be in [0, vocab_size={vocab_size}), got {mask_token_id}")
    special = [check_int(f"special_ids[{i}]", s) for i, s in enumerate(special_ids)]
    mlm_probability = check_probability("mlm_probability", mlm_probability)
    split = check_split(split)
    cap = check_int("max_predictions_per_seq", max_predictions_per_seq, minimum=0, allow_none=True)
    if whole_word_mask and continuation_table is None:
        raise ValueError("whole_word_mask=True needs continuation_table (see continuation_table_from_vocab)")
    table = None
    if whole_word_mask:
        table = np.asarray(continuation_table)
        if table.dtype.kind not in "biu" or table.ndim != 1:
            raise TypeError(f"continuation_table must be a 1-D bool array, got dtype {table.dtype}, {table.ndim}-D")
        if table.shape[0] != vocab_size:
            raise ValueError(f"continuation_table has {table.shape[0]} entries, vocab_size is {vocab_size}")
    return _C.MaskingConfig(vocab_size, mask_token_id, np.asarray(special, dtype=np.int64), mlm_probability, split,
                            bool(whole_word_mask), table, bool(exact_count), -1 if cap is None else cap)


def _as_int_array(name: str, value, ndim: int) -> np.ndarray:
    """numpy view of an integer array / tensor; TypeError for floats and ragged input."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got {value.dtype}")
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # numpy >= 1.24 refuses ragged nested lists
        raise TypeError(f"{name} must be a rectangular integer array (ragged rows?): {exc}") from None
    if arr.dtype.kind == "O":
        raise TypeError(f"{name} must be a rectangular integer array, got an object array (ragged rows?)")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {arr.ndim}-D with shape {arr.shape}")
    return arr


def mask_tokens(input_ids, config=None, *, lengths=None, seed: int = 0, streams=None, num_threads: int = 0,
                **masking_options) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a padded batch.

    Args:
        input_ids: int [batch, seq_len] (numpy array, tensor or nested lists).
        config: a masking_config(...); or None and the masking_config keyword arguments (vocab_size,
            mask_token_id, special_ids, mlm_probability, split, ...) in ``masking_options``.
        lengths: int [batch] real tokens per row (positions >= lengths[b] are padding: copied, label -100);
            None: every position is real (padding is still protected through the pad id in ``special_ids``).
        seed, streams: sequence b uses the stream (seed, streams[b]); streams default to 0..batch-1.
        num_threads: 0 = all cores; the output does not depend on it.
    Returns:
        (input_ids, labels): int64 [batch, seq_len] tensors sharing memory with the extension's numpy buffers.
    """
    if config is None:
        config = masking_config(**masking_options)
    elif masking_options:
        raise TypeError(f"pass either config or masking options, not both (got {sorted(masking_options)})")
    ids = _as_int_array("input_ids", input_ids, 2)
    lens = None if lengths is None else _as_int_array("lengths", lengths, 1)
    strm = None if streams is None else _as_int_array("streams", streams, 1)
    num_threads = check_int("num_threads", num_threads, minimum=0)
    seed = check_int("seed", seed) & MASK64
    out_ids, labels = _C.mask_tokens(ids, config, lens, seed, strm, num_threads)
    with torch.inference_mode(False):  # never inference tensors: a batch made under inference_mode must still train
        return torch.from_numpy(out_ids), torch.from_numpy(labels)
