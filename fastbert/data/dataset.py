"""Pretraining datasets from raw text: sentence splitting, WordPiece tokenization with Hugging Face
``tokenizers`` (BertWordPieceTokenizer over a local vocab.txt), NSP pairs or single sequences.

Items are dicts of int64 numpy arrays plus a "sample_index", so MLMCollator masks them deterministically
whatever the DataLoader worker count or order. Datasets hold only numpy arrays and ints: they pickle cheaply
into worker processes.
"""
from __future__ import annotations

import csv
import os
import re
import sys
from typing import Sequence, Union

import numpy as np
import torch

from ._checks import check_int
from .collator import SAMPLE_INDEX_KEY
from .nsp import Corpus, NSPPairs, build_nsp_pairs
from .tokenizer import SpecialTokens, load_wordpiece_tokenizer

PathLike = Union[str, os.PathLike]

# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) before whitespace, at a line break,
# or at an HTML <br /> (common in web text such as the IMDb reviews).
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\s*<br\s*/?>\s*|\s*\n\s*", re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    """Split text into sentences with a simple punctuation rule (no model); empty pieces are dropped."""
    return [s.strip() for s in _SENTENCE_BREAK.split(text) if s and s.strip()]


def load_csv_texts(path: PathLike, column: str, *, limit: int | None = None) -> list[str]:
    """The non-empty texts of one column of a CSV file with a header row (ValueError if the column is missing
    or there is no text)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(f"column {column!r} not in {os.fspath(path)!r} (columns: {reader.fieldnames})")
        texts = []
        for row in reader:
            text = (row[column] or "").strip()
            if text:
                texts.append(text)
                if limit is not None and len(texts) >= limit:
                    break
    if not texts:
        raise ValueError(f"no text in column {column!r} of {os.fspath(path)!r}")
    return texts


def load_text_documents(path: PathLike) -> list[str]:
    """Documents of a plain-text file separated by blank lines (ValueError if there are none)."""
    with open(path, encoding="utf-8") as f:
        docs = [d.strip() for d in re.split(r"\n\s*\n", f.read())]
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError(f"no documents in {os.fspath(path)!r}")
    return docs


def tokenize_documents(texts: Sequence[str], vocab_file: PathLike, *, lowercase: bool = True) -> Corpus:
    """Split each text into sentences and WordPiece-tokenize them (no special tokens) into a Corpus; empty
    sentences and documents are dropped."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, got a single str")
    tokenizer = load_wordpiece_tokenizer(vocab_file, lowercase=lowercase)
    per_doc = [split_sentences(t) for t in texts]
    flat = [s for doc in per_doc for s in doc]
    encodings = tokenizer.encode_batch(flat, add_special_tokens=False) if flat else []
    sentences, k = [], 0
    for doc in per_doc:
        sentences.append([encodings[k + j].ids for j in range(len(doc))])
        k += len(doc)
    return Corpus.from_documents(sentences)


class NSPDataset(torch.utils.data.Dataset):
    """Sentence-pair (NSP) pretraining examples built once from raw documents.

    Item i: {"input_ids": int64 [n], "token_type_ids": int64 [n], "next_sentence_label": int,
    "sample_index": i}. Feed batches to MLMCollator for the MLM labels.

    Args:
        texts: raw documents (each split into sentences with split_sentences).
        vocab_file: WordPiece vocab.txt (tokenized with tokenizers.BertWordPieceTokenizer).
        max_seq_len, short_seq_prob, random_next_prob: see build_nsp_pairs.
        dupe_factor: build the pairs this many times with different seeds (as create_pretraining_data.py).
        seed, num_threads: the pairs depend on seed only.
    """

    def __init__(self, texts: Sequence[str], vocab_file: PathLike, *, max_seq_len: int = 128,
                 short_seq_prob: float = 0.1, random_next_prob: float = 0.5, dupe_factor: int = 1, seed: int = 0,
                 lowercase: bool = True, num_threads: int = 0):
        special = SpecialTokens.from_vocab(vocab_file)
        corpus = tokenize_documents(texts, vocab_file, lowercase=lowercase)
        self._init(corpus, special, max_seq_len=max_seq_len, short_seq_prob=short_seq_prob,
                   random_next_prob=random_next_prob, dupe_factor=dupe_factor, seed=seed, num_threads=num_threads)

    @classmethod
    def from_corpus(cls, corpus: Corpus, special_tokens: SpecialTokens, *, max_seq_len: int = 128,
                    short_seq_prob: float = 0.1, random_next_prob: float = 0.5, dupe_factor: int = 1, seed: int = 0,
                    num_threads: int = 0) -> "NSPDataset":
        """From already tokenized documents (Corpus.from_documents / tokenize_documents)."""
        self = cls.__new__(cls)
        self._init(corpus, special_tokens, max_seq_len=max_seq_len, short_seq_prob=short_seq_prob,
                   random_next_prob=random_next_prob, dupe_factor=dupe_factor, seed=seed, num_threads=num_threads)
        return self

    def _init(self, corpus: Corpus, special: SpecialTokens, *, max_seq_len, short_seq_prob, random_next_prob,
              dupe_factor, seed, num_threads):
        from ._ext import _C

        if corpus.num_documents < 2:
            raise ValueError(f"NSPDataset needs at least 2 non-empty documents, got {corpus.num_documents}")
        dupe_factor = check_int("dupe_factor", dupe_factor, minimum=1)
        seed = check_int("seed", seed)
        self.special_tokens = special
        self.max_seq_len = max_seq_len
        self.pairs = NSPPairs.concatenate([
            build_nsp_pairs(corpus, cls_token_id=special.cls_token_id, sep_token_id=special.sep_token_id,
                            max_seq_len=max_seq_len, short_seq_prob=short_seq_prob,
                            random_next_prob=random_next_prob, seed=_C.derive_seed(seed & (2**64 - 1), k),
                            num_threads=num_threads)
            for k in range(dupe_factor)])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for NSPDataset of {len(self)} pairs")
        i = i % len(self)
        item = self.pairs[i]
        item[SAMPLE_INDEX_KEY] = i
        return item


class MLMDataset(torch.utils.data.Dataset):
    """One ``[CLS] text [SEP]`` sequence per document (truncated to max_seq_len), for MLM without NSP.

    Item i: {"input_ids": int64 [n], "sample_index": i}.
    """

    def __init__(self, texts: Sequence[str], vocab_file: PathLike, *, max_seq_len: int = 512,
                 lowercase: bool = True):
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, got a single str")
        max_seq_len = check_int("max_seq_len", max_seq_len)
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len must be >= 3 ([CLS] text [SEP]), got {max_seq_len}")
        if not texts:
            raise ValueError("MLMDataset got no texts")
        special = SpecialTokens.from_vocab(vocab_file)
        tokenizer = load_wordpiece_tokenizer(vocab_file, lowercase=lowercase)
        tokenizer.enable_truncation(max_seq_len)
        encodings = tokenizer.encode_batch(list(texts), add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        self.special_tokens = special
        self.tokens = np.fromiter((t for e in encodings for t in e.ids), dtype=np.int64, count=int(lengths.sum()))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for MLMDataset of {len(self)} sequences")
        i = i % len(self)
        return {"input_ids": self.tokens[self.offsets[i]:self.offsets[i + 1]], SAMPLE_INDEX_KEY: i}
