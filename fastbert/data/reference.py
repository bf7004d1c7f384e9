"""Pure-Python reference of the C++ data pipeline (``fastbert._C``): the test oracle, never used at run time.

Every function reproduces its C++ counterpart draw for draw, so tests compare outputs for exact equality:
the RNG is SplitMix64 on Python ints masked to 64 bits, floats are ``(x >> 11) * 2**-53`` (exact in binary64),
bounded integers use rejection (``x >= 2**64 mod n`` then ``x % n``). The algorithms are documented in
csrc/masking.h, csrc/nsp.h and csrc/collate.h; plain lists in, plain lists / numpy arrays out.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..config import IGNORE_INDEX

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    """SplitMix64 finaliser."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def derive_seed(seed: int, value: int) -> int:
    """mix64(seed ^ mix64(value + golden)): key of an independent stream."""
    return mix64((seed & MASK64) ^ mix64((value + GOLDEN) & MASK64))


class Rng:
    """SplitMix64 stream keyed by (seed, stream), identical to fastbert::Rng."""

    def __init__(self, seed: int, stream: int):
        self.state = derive_seed(seed, stream & MASK64)

    def next(self) -> int:
        self.state = (self.state + GOLDEN) & MASK64
        return mix64(self.state)

    def uniform(self) -> float:
        return (self.next() >> 11) * 2.0**-53

    def below(self, n: int) -> int:
        threshold = ((1 << 64) - n) % n
        while True:
            x = self.next()
            if x >= threshold:
                return x % n

    def randint(self, lo: int, hi: int) -> int:
        return lo + self.below(hi - lo + 1)


def mask_sequence(tokens: Sequence[int], rng: Rng, *, vocab_size: int, mask_token_id: int,
                  special_ids: Sequence[int], mlm_probability: float = 0.15,
                  split: tuple[float, float, float] = (0.8, 0.1, 0.1), whole_word_mask: bool = False,
                  continuation_table=None, exact_count: bool = False,
                  max_predictions_per_seq: int = -1) -> tuple[list[int], list[int]]:
    """MLM masking of one sequence; returns (ids, labels). Algorithm: csrc/masking.h."""
    protected = set(int(s) for s in special_ids) | {mask_token_id}
    excluded = sorted(protected)
    tokens = [int(t) for t in tokens]
    ids = list(tokens)
    labels = [IGNORE_INDEX] * len(tokens)
    mask_prob, random_prob, _ = split
    mask_or_random = mask_prob + random_prob

    def replace(i: int) -> None:
        labels[i] = tokens[i]
        u = rng.uniform()
        if u < mask_prob:
            ids[i] = mask_token_id
        elif u < mask_or_random:
            k = rng.below(vocab_size - len(excluded))
            for e in excluded:
                if e > k:
                    break
                k += 1
            ids[i] = k

    for i, t in enumerate(tokens):
        if not 0 <= t < vocab_size:
            raise ValueError(f"token {t} at {i} is outside [0, {vocab_size})")

    def joins_group(i: int, group_end: int) -> bool:
        return bool(whole_word_mask and continuation_table[tokens[i]] and group_end == i)

    if not exact_count:
        group_end, group_chosen = -1, False
        for i, t in enumerate(tokens):
            if t in protected:
                continue
            if not joins_group(i, group_end):
                group_chosen = rng.uniform() < mlm_probability
            group_end = i + 1
            if group_chosen:
                replace(i)
        return ids, labels

    groups: list[list[int]] = []  # [start, length]
    for i, t in enumerate(tokens):
        if t in protected:
            continue
        if groups and joins_group(i, groups[-1][0] + groups[-1][1]):
            groups[-1][1] += 1
        else:
            groups.append([i, 1])
    num_candidates = sum(length for _, length in groups)
    budget = 0
    if num_candidates > 0 and mlm_probability > 0.0:
        budget = max(1, int(math.floor(mlm_probability * float(num_candidates) + 0.5)))
        if max_predictions_per_seq >= 0:
            budget = min(budget, max_predictions_per_seq)
    order = list(range(len(groups)))
    for i in range(len(groups), 1, -1):
        j = rng.below(i)
        order[i - 1], order[j] = order[j], order[i - 1]
    chosen = [False] * len(tokens)
    count = 0
    for g in order:
        if count >= budget:
            break
        start, length = groups[g]
        if count + length > budget:
            continue
        for i in range(start, start + length):
            chosen[i] = True
        count += length
    for i, c in enumerate(chosen):
        if c:
            replace(i)
    return ids, labels


def collate(sequences: Sequence[Sequence[int]], token_type_ids=None, *, pad_token_id: int = 0, masking=None,
            seed: int = 0, streams=None, pad_to_multiple_of: int = 0, packed: bool = False) -> dict:
    """Reference of ``_C.collate``: ``masking`` is None or a dict of mask_sequence keyword arguments."""
    batch = len(sequences)
    seqs = [[int(t) for t in s] for s in sequences]
    if token_type_ids is not None:
        types = [[int(t) for t in s] for s in token_type_ids]
    else:
        types = [[0] * len(s) for s in seqs]
    ids_rows, label_rows = [], []
    for b, s in enumerate(seqs):
        if masking is not None:
            stream = int(streams[b]) if streams is not None else b
            ids, labels = mask_sequence(s, Rng(seed, stream), **masking)
        else:
            ids, labels = list(s), [IGNORE_INDEX] * len(s)
        ids_rows.append(ids)
        label_rows.append(labels)
    lengths = [len(s) for s in seqs]
    max_len = max(lengths) if lengths else 0
    out: dict = {}
    if packed:
        out["input_ids"] = np.array([t for r in ids_rows for t in r], dtype=np.int64)
        out["token_type_ids"] = np.array([t for r in types for t in r], dtype=np.int64)
        if masking is not None:
            out["labels"] = np.array([t for r in label_rows for t in r], dtype=np.int64)
        out["position_ids"] = np.array([i for n in lengths for i in range(n)], dtype=np.int64)
        out["cu_seqlens"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        out["max_seqlen"] = max_len
        return out
    row_len = max_len
    if pad_to_multiple_of > 1:
        row_len = -(-row_len // pad_to_multiple_of) * pad_to_multiple_of
    pad = lambda rows, value: np.array([r + [value] * (row_len - len(r)) for r in rows],  # noqa: E731
                                       dtype=np.int64).reshape(batch, row_len)
    out["input_ids"] = pad(ids_rows, pad_token_id)
    out["attention_mask"] = pad([[1] * n for n in lengths], 0)
    out["token_type_ids"] = pad(types, 0)
    if masking is not None:
        out["labels"] = pad(label_rows, IGNORE_INDEX)
    return out


def build_document_pairs(documents: Sequence[Sequence[Sequence[int]]], doc: int, *, cls_token_id: int,
                         sep_token_id: int, max_seq_len: int = 128, short_seq_prob: float = 0.1,
                         random_next_prob: float = 0.5, seed: int = 0) -> list[tuple[list[int], list[int], int]]:
    """NSP pairs of one document as (input_ids, token_type_ids, next_sentence_label). Algorithm: csrc/nsp.h."""
    rng = Rng(seed, doc)
    max_num_tokens = max_seq_len - 3
    target = max_num_tokens
    if rng.uniform() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    sentences = documents[doc]
    pairs = []
    chunk_begin, chunk_len = 0, 0
    i = 0
    while i < len(sentences):
        chunk_len += len(sentences[i])
        if i != len(sentences) - 1 and chunk_len < target:
            i += 1
            continue
        chunk_size = i - chunk_begin + 1
        a_end = rng.randint(1, chunk_size - 1) if chunk_size >= 2 else 1
        a = [int(t) for s in sentences[chunk_begin:chunk_begin + a_end] for t in s]
        b: list[int] = []
        not_next = rng.uniform() < random_next_prob
        if not not_next and chunk_size == 1:
            if len(a) >= 2:
                cut = rng.randint(1, len(a) - 1)
                a, b = a[:cut], a[cut:]
            else:
                not_next = True
        elif not not_next:
            b = [int(t) for s in sentences[chunk_begin + a_end:i + 1] for t in s]
        if not_next:
            target_b = target - len(a)
            r = rng.randint(0, len(documents) - 2)
            if r >= doc:
                r += 1
            other = documents[r]
            start = rng.randint(0, len(other) - 1)
            for s in other[start:]:
                b.extend(int(t) for t in s)
                if len(b) >= target_b:
                    break
            i -= chunk_size - a_end
        while len(a) + len(b) > max_num_tokens:
            t = a if len(a) > len(b) else b
            if rng.uniform() < 0.5:
                del t[0]
            else:
                t.pop()
        ids = [cls_token_id] + a + [sep_token_id] + b + [sep_token_id]
        types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        pairs.append((ids, types, int(not_next)))
        chunk_begin, chunk_len = i + 1, 0
        i += 1
    return pairs


def build_nsp_pairs(documents, **kwargs) -> list[tuple[list[int], list[int], int]]:
    """All documents' pairs in document order."""
    return [p for d in range(len(documents)) for p in build_document_pairs(documents, d, **kwargs)]
