"""fastbert.data: the data side of BERT pretraining on the C++ extension ``fastbert._C``.

MLM masking (80/10/10, whole-word, exact count), NSP pair building, padded and padding-free (cu_seqlens)
collation, and datasets built from raw text with Hugging Face ``tokenizers``. Loops run in C++ with the GIL
released, multi-threaded over sequences; results depend only on the seed (and sample indices), never on the
thread count or DataLoader worker order. fastbert/data/reference.py is the pure-Python test oracle.
"""
from .collator import MIN_TOKENS_PER_THREAD, SAMPLE_INDEX_KEY, MLMCollator, collate
from .dataset import (MLMDataset, NSPDataset, load_csv_texts, load_text_documents, split_sentences,
                      tokenize_documents)
from .masking import IGNORE_INDEX, mask_tokens, masking_config
from .nsp import Corpus, NSPPairs, build_nsp_pairs
from .tokenizer import (SpecialTokens, continuation_table_from_vocab, load_wordpiece_tokenizer, read_vocab)

__all__ = [
    "IGNORE_INDEX", "MIN_TOKENS_PER_THREAD", "SAMPLE_INDEX_KEY", "Corpus", "MLMCollator", "MLMDataset", "NSPDataset", "NSPPairs",
    "SpecialTokens", "build_nsp_pairs", "collate", "continuation_table_from_vocab", "load_csv_texts",
    "load_text_documents", "load_wordpiece_tokenizer", "mask_tokens", "masking_config", "read_vocab",
    "split_sentences", "tokenize_documents",
]
