"""WordPiece vocabulary helpers: special-token ids, the whole-word "is continuation" table, and the Hugging Face
``tokenizers`` BertWordPieceTokenizer used by the datasets (no hand-written tokenizer)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import numpy as np

VocabLike = Union[str, os.PathLike, Sequence[str], Mapping[str, int]]


def read_vocab(vocab: VocabLike) -> list[str]:
    """Tokens in id order from a vocab.txt path (one token per line), a list of tokens or a token -> id dict."""
    if isinstance(vocab, (str, os.PathLike)):
        with open(vocab, encoding="utf-8") as f:
            tokens = [line.rstrip("\n").rstrip("\r") for line in f]
        while tokens and tokens[-1] == "":
            tokens.pop()
    elif isinstance(vocab, Mapping):
        tokens = [""] * len(vocab)
        for token, i in vocab.items():
            if not 0 <= i < len(vocab):
                raise ValueError(f"vocab id {i} of {token!r} is outside [0, {len(vocab)})")
            tokens[i] = token
    else:
        tokens = list(vocab)
    if not tokens:
        raise ValueError("vocab is empty")
    return tokens


@dataclass(frozen=True)
class SpecialTokens:
    """Vocabulary size and special-token ids; the defaults are bert-base-uncased's."""

    vocab_size: int = 30522
    cls_token_id: int = 101
    sep_token_id: int = 102
    pad_token_id: int = 0
    mask_token_id: int = 103
    unk_token_id: int = 100

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids never chosen for masking: [CLS], [SEP], [PAD], [UNK] ([MASK] is excluded separately)."""
        return (self.cls_token_id, self.sep_token_id, self.pad_token_id, self.unk_token_id)

    @classmethod
    def from_vocab(cls, vocab: VocabLike, *, cls_token: str = "[CLS]", sep_token: str = "[SEP]",
                   pad_token: str = "[PAD]", mask_token: str = "[MASK]", unk_token: str = "[UNK]") -> "SpecialTokens":
        tokens = read_vocab(vocab)
        index = {t: i for i, t in enumerate(tokens)}
        ids = {}
        for name, token in (("cls", cls_token), ("sep", sep_token), ("pad", pad_token), ("mask", mask_token),
                            ("unk", unk_token)):
            if token not in index:
                raise ValueError(f"{name}_token {token!r} is not in the vocab ({len(tokens)} tokens)")
            ids[f"{name}_token_id"] = index[token]
        return cls(vocab_size=len(tokens), **ids)


def continuation_table_from_vocab(vocab: VocabLike, prefix: str = "##") -> np.ndarray:
    """bool [vocab_size]: True for WordPiece continuation pieces (tokens starting with ``prefix``), which
    whole-word masking keeps with the piece before them."""
    tokens = read_vocab(vocab)
    return np.fromiter((t.startswith(prefix) for t in tokens), dtype=bool, count=len(tokens))


def load_wordpiece_tokenizer(vocab_file: Union[str, os.PathLike], *, lowercase: bool = True):
    """``tokenizers.BertWordPieceTokenizer`` over a local vocab.txt (the fast Rust tokenizer)."""
    from tokenizers import BertWordPieceTokenizer

    if not os.path.isfile(vocab_file):
        raise ValueError(f"vocab_file {os.fspath(vocab_file)!r} does not exist")
    return BertWordPieceTokenizer(os.fspath(vocab_file), lowercase=lowercase)
