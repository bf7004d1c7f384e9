"""Next-sentence-prediction pairs on the C++ extension.

Each document (a list of sentences, each a list of token ids) yields pairs ``[CLS] A [SEP] B [SEP]``
(token_type_ids 0 up to the first [SEP], 1 after): A is one or more consecutive sentences, B is the actual
continuation (IsNext, label 0) or a span from another document (NotNext, label 1) with probability
``random_next_prob`` (0.5). The target length is ``max_seq_len``, or with probability ``short_seq_prob`` a
uniform length in [2, max_seq_len - 3]; the longer side is truncated from the front or back at random.
Document d draws from the stream (seed, d), so the pairs do not depend on ``num_threads``. The exact algorithm
(google-research/bert's create_instances_from_document, adjusted so that the labels are exactly
Bernoulli(random_next_prob)) is in csrc/nsp.h and fastbert/data/reference.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ._checks import check_int, check_probability
from ._ext import _C
from .masking import MASK64


@dataclass
class Corpus:
    """Documents in compressed form: sentence s is tokens[sentence_offsets[s]:sentence_offsets[s+1]], document d
    is sentences document_offsets[d]..document_offsets[d+1]-1. All int64."""

    tokens: np.ndarray
    sentence_offsets: np.ndarray
    document_offsets: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @classmethod
    def from_documents(cls, documents: Sequence[Sequence[Sequence[int]]], *, drop_empty: bool = True) -> "Corpus":
        """From nested lists; empty sentences and documents are dropped (drop_empty=False: ValueError later)."""
        sentences, doc_sizes = [], []
        for doc in documents:
            sents = [np.asarray(s) for s in doc]
            if drop_empty:
                sents = [s for s in sents if s.size]
                if not sents:
                    continue
            for s in sents:
                if s.dtype.kind not in "iu" or s.ndim != 1:
                    raise TypeError(f"sentences must be 1-D integer sequences, got dtype {s.dtype}, {s.ndim}-D")
            sentences.extend(sents)
            doc_sizes.append(len(sents))
        lengths = np.fromiter((s.size for s in sentences), dtype=np.int64, count=len(sentences))
        tokens = np.concatenate(sentences).astype(np.int64) if sentences else np.zeros(0, np.int64)
        return cls(tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   np.concatenate([[0], np.cumsum(doc_sizes, dtype=np.int64)]).astype(np.int64))


@dataclass
class NSPPairs:
    """Pairs back to back: pair k is input_ids[offsets[k]:offsets[k+1]] (int64 numpy arrays)."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    offsets: np.ndarray
    next_sentence_label: np.ndarray
    document_index: np.ndarray

    def __len__(self) -> int:
        return len(self.next_sentence_label)

    def __getitem__(self, k: int) -> dict:
        s, e = self.offsets[k], self.offsets[k + 1]
        return {"input_ids": self.input_ids[s:e], "token_type_ids": self.token_type_ids[s:e],
                "next_sentence_label": int(self.next_sentence_label[k])}

    @classmethod
    def concatenate(cls, parts: Sequence["NSPPairs"]) -> "NSPPairs":
        starts = np.cumsum([0] + [p.offsets[-1] for p in parts[:-1]])
        return cls(np.concatenate([p.input_ids for p in parts]), np.concatenate([p.token_type_ids for p in parts]),
                   np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, starts)]).astype(np.int64),
                   np.concatenate([p.next_sentence_label for p in parts]),
                   np.concatenate([p.document_index for p in parts]))


def build_nsp_pairs(documents: Sequence[Sequence[Sequence[int]]] | Corpus, *, cls_token_id: int,
                    sep_token_id: int, max_seq_len: int = 128, short_seq_prob: float = 0.1,
                    random_next_prob: float = 0.5, seed: int = 0, num_threads: int = 0) -> NSPPairs:
    """Build NSP pairs from documents (nested lists of ids, or a Corpus). Needs at least 2 non-empty documents.

    Args:
        max_seq_len: length of a full pair including [CLS] and two [SEP] (>= 5).
        num_threads: 0 = all cores; the pairs do not depend on it.
    """
    corpus = documents if isinstance(documents, Corpus) else Corpus.from_documents(documents)
    max_seq_len = check_int("max_seq_len", max_seq_len)
    if max_seq_len < 5:
        raise ValueError(f"max_seq_len must be >= 5 ([CLS] A [SEP] B [SEP] with non-empty A and B), got {max_seq_len}")
    out = _C.build_nsp_pairs(corpus.tokens, corpus.sentence_offsets, corpus.document_offsets,
                             check_int("cls_token_id", cls_token_id, minimum=0),
                             check_int("sep_token_id", sep_token_id, minimum=0), max_seq_len,
                             check_probability("short_seq_prob", short_seq_prob),
                             check_probability("random_next_prob", random_next_prob),
                             check_int("seed", seed) & MASK64, check_int("num_threads", num_threads, minimum=0))
    return NSPPairs(**out)
