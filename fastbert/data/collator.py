"""Batch collation: dynamic padding or the padding-free packed layout, fused with MLM masking in C++.

Padded output (HF key names), B examples, L = longest rounded up to ``pad_to_multiple_of``:
    input_ids, attention_mask, token_type_ids, labels: int64 [B, L]; next_sentence_label: int64 [B].
Packed output (what the padding-free encoder consumes), T = total real tokens:
    input_ids, token_type_ids, labels, position_ids: int64 [T] (positions restart at 0 per sequence);
    cu_seqlens: int32 [B + 1] (sequence b is [cu_seqlens[b], cu_seqlens[b+1])); max_seqlen: int;
    next_sentence_label: int64 [B]. There is no attention_mask: the boundaries are cu_seqlens.
Masks are identical in both layouts for the same seed. Tensors wrap the extension's numpy buffers (no copy).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ._checks import check_int, check_layout, check_probability, check_split
from ._ext import _C
from .masking import MASK64, masking_config
from .tokenizer import SpecialTokens, VocabLike, continuation_table_from_vocab

SAMPLE_INDEX_KEY = "sample_index"
# a batch is split over C++ threads only when each thread gets at least this many tokens
MIN_TOKENS_PER_THREAD = int(_C.MIN_TOKENS_PER_THREAD)


def _to_torch(out: dict) -> dict[str, Any]:
    # never inference tensors (a batch made under torch.inference_mode must still train a model)
    with torch.inference_mode(False):
        return {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in out.items()}


def collate(input_ids: Sequence, token_type_ids: Sequence | None = None, *, pad_token_id: int = 0,
            pad_to_multiple_of: int | None = None, packed: bool = False, num_threads: int = 1) -> dict[str, Any]:
    """Pad (or pack) a list of 1-D id sequences without masking (fine-tuning / evaluation batches).

    Args:
        input_ids: list of B 1-D integer sequences (lists, numpy arrays, CPU tensors).
        token_type_ids: None (all 0) or a list of B sequences of matching lengths.
        pad_to_multiple_of: padded layout only: round L up to a multiple of it.
        packed: return the padding-free layout instead.
    Returns:
        dict of tensors described in the module docstring (no labels).
    """
    pad, threads = check_layout(pad_to_multiple_of, packed, num_threads)
    out = _C.collate(_as_list("input_ids", input_ids), None if token_type_ids is None else _as_list("token_type_ids", token_type_ids),
                     check_int("pad_token_id", pad_token_id, minimum=0, maximum=2**63 - 1), None, 0, None, pad or 0,
                     bool(packed), threads)
    return _to_torch(out)


def _as_list(name: str, seqs) -> list:
    try:
        return list(seqs)
    except TypeError:
        raise TypeError(f"{name} must be a list of 1-D integer sequences, got {type(seqs).__name__}") from None


def _int_vector(name: str, values: list) -> np.ndarray:
    """int64 [B] from one integer per example (TypeError naming the key otherwise; floats are not truncated)."""
    try:
        arr = np.asarray(values)
    except ValueError:
        arr = np.asarray(values, dtype=object)
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise TypeError(f"every example's {name!r} must be one integer, got {values[:4]!r}...")
    return arr.astype(np.int64)


def _gather(examples: Sequence[Mapping[str, Any]], key: str) -> list:
    try:
        return [ex[key] for ex in examples]
    except (KeyError, TypeError):
        raise ValueError(f"every example needs a {key!r} entry (the first one has it, or it is required)") from None


def _check_special_ids(st: SpecialTokens, extra: tuple[int, ...]) -> None:
    """Every special id is in the vocab, every special role has its own id, and extra_special_ids neither repeat
    one another nor a role's id."""
    roles = {name: getattr(st, f"{name}_token_id") for name in ("cls", "sep", "pad", "mask", "unk")}
    vocab_size = check_int("special_tokens.vocab_size", st.vocab_size, minimum=1)
    named = [(f"special_tokens.{name}_token_id", i) for name, i in roles.items()]
    for name, i in named + [(f"extra_special_ids[{k}]", i) for k, i in enumerate(extra)]:
        if not 0 <= check_int(name, i) < vocab_size:
            raise ValueError(f"{name}={i} is outside [0, vocab_size={vocab_size})")
    seen: dict[int, str] = {}
    for name, i in roles.items():
        if i in seen:
            raise ValueError(f"special_tokens: {seen[i]}_token_id and {name}_token_id are both {i}")
        seen[i] = name
    for k, i in enumerate(extra):
        if i in seen:
            raise ValueError(f"extra_special_ids[{k}]={i} repeats {seen[i]}" + ("" if seen[i].startswith("extra") else "_token_id"))
        seen[i] = f"extra_special_ids[{k}]"


class MLMCollator:
    """Collate function for BERT pretraining: pads or packs, masks (MLM) and passes NSP labels through.

    Examples are dicts with "input_ids" and optionally "token_type_ids", "next_sentence_label" and
    "sample_index", or plain id sequences. Other keys are ignored.

    Determinism: with a "sample_index" in every example, example i is masked from the stream
    (derive_seed(seed, epoch), sample_index), so a batch's masks depend only on (seed, epoch, indices): not
    on batch composition, DataLoader worker count or order, or num_threads. Without indices, call k of this
    collator object uses seed derive_seed(derive_seed(seed, epoch), 2^63 + k) and stream = position in
    batch: deterministic for a given sequence of calls in one process (DataLoader workers each count their
    own calls, so use indices there). ``set_epoch`` draws fresh masks each epoch.

    Args:
        special_tokens: vocab size and special ids (default: bert-base-uncased's); see SpecialTokens.from_vocab.
        mlm_probability, split, whole_word_mask, continuation_table, exact_count, max_predictions_per_seq:
            see fastbert.data.masking_config.
        extra_special_ids: more ids never masked, besides [CLS], [SEP], [PAD], [UNK].
        pad_to_multiple_of: padded layout: round the length up to a multiple of it (e.g. 8 for tensor cores).
        packed: emit the padding-free layout (cu_seqlens, max_seqlen, position_ids) instead of padding.
        seed: base seed. epoch: initial epoch (see set_epoch).
        num_threads: C++ threads per batch (0 = all cores; results do not depend on it). Inside DataLoader
            workers keep 1.
    """

    def __init__(self, special_tokens: SpecialTokens | None = None, *, mlm_probability: float = 0.15,
                 split: Sequence[float] = (0.8, 0.1, 0.1), whole_word_mask: bool = False, continuation_table=None,
                 exact_count: bool = False, max_predictions_per_seq: int | None = None,
                 extra_special_ids: Sequence[int] = (), pad_to_multiple_of: int | None = None, packed: bool = False,
                 seed: int = 0, epoch: int = 0, num_threads: int = 1):
        self.special_tokens = special_tokens if special_tokens is not None else SpecialTokens()
        if not isinstance(self.special_tokens, SpecialTokens):
            raise TypeError(f"special_tokens must be a SpecialTokens, got {type(special_tokens).__name__}")
        self.mlm_probability = check_probability("mlm_probability", mlm_probability)
        self.split = check_split(split)
        self.whole_word_mask = bool(whole_word_mask)
        if continuation_table is not None and not self.whole_word_mask:
            raise ValueError("continuation_table is only used with whole_word_mask=True; pass both, or neither")
        self.continuation_table = None if continuation_table is None else np.asarray(continuation_table)
        self.exact_count = bool(exact_count)
        self.max_predictions_per_seq = max_predictions_per_seq
        self.extra_special_ids = tuple(check_int(f"extra_special_ids[{i}]", s) for i, s in enumerate(extra_special_ids))
        _check_special_ids(self.special_tokens, self.extra_special_ids)
        self.pad_to_multiple_of, self.num_threads = check_layout(pad_to_multiple_of, packed, num_threads)
        self.packed = bool(packed)
        self.seed = check_int("seed", seed) & MASK64
        self.epoch = check_int("epoch", epoch, minimum=0)
        self._calls = 0
        self._config = self._build_config()

    @classmethod
    def from_vocab(cls, vocab: VocabLike, **kwargs) -> "MLMCollator":
        """Collator whose special ids (and, with whole_word_mask=True, continuation table) come from a
        vocab.txt path, a token list or a token -> id dict."""
        if kwargs.get("whole_word_mask") and kwargs.get("continuation_table") is None:
            kwargs["continuation_table"] = continuation_table_from_vocab(vocab)
        return cls(SpecialTokens.from_vocab(vocab), **kwargs)

    def _build_config(self):
        st = self.special_tokens
        return masking_config(vocab_size=st.vocab_size, mask_token_id=st.mask_token_id,
                              special_ids=tuple(st.special_ids) + self.extra_special_ids,
                              mlm_probability=self.mlm_probability, split=self.split,
                              whole_word_mask=self.whole_word_mask, continuation_table=self.continuation_table,
                              exact_count=self.exact_count, max_predictions_per_seq=self.max_predictions_per_seq)

    def set_epoch(self, epoch: int) -> None:
        """Select the masks of another epoch (and restart the call counter)."""
        self.epoch = check_int("epoch", epoch, minimum=0)
        self._calls = 0

    def __getstate__(self):  # the pybind11 config is rebuilt after unpickling (DataLoader spawn workers)
        state = self.__dict__.copy()
        del state["_config"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._config = self._build_config()

    def __call__(self, examples: Sequence[Mapping[str, Any] | Sequence[int]]) -> dict[str, Any]:
        if len(examples) == 0:
            raise ValueError("MLMCollator got an empty batch")
        first = examples[0]
        token_types = nsp = streams = None
        if isinstance(first, Mapping):
            ids = _gather(examples, "input_ids")
            if "token_type_ids" in first:
                token_types = _gather(examples, "token_type_ids")
            if "next_sentence_label" in first:
                nsp = _int_vector("next_sentence_label", _gather(examples, "next_sentence_label"))
            if SAMPLE_INDEX_KEY in first:
                streams = _int_vector(SAMPLE_INDEX_KEY, _gather(examples, SAMPLE_INDEX_KEY))
        else:
            ids = list(examples)
        seed = _C.derive_seed(self.seed, self.epoch)
        if streams is None:
            seed = _C.derive_seed(seed, (1 << 63) + self._calls)
            self._calls += 1
        out = _C.collate(ids, token_types, self.special_tokens.pad_token_id, self._config, seed, streams,
                         self.pad_to_multiple_of or 0, self.packed, self.num_threads)
        if nsp is not None:
            out["next_sentence_label"] = nsp
        return _to_torch(out)

    def __repr__(self) -> str:
        return (f"MLMCollator(mlm_probability={self.mlm_probability}, split={self.split}, "
                f"whole_word_mask={self.whole_word_mask}, exact_count={self.exact_count}, packed={self.packed}, "
                f"pad_to_multiple_of={self.pad_to_multiple_of}, seed={self.seed}, epoch={self.epoch})")
