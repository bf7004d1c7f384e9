"""Property-based tests (hypothesis) of fastbert.data: random lengths including 0 and 1, all-special rows,
random options; the C++ extension must equal the Python reference exactly and keep the invariants."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastbert.data as D
from fastbert.data import reference as R
from fastbert.data._ext import _C

V, PAD, UNK, CLS, SEP, MASK = 40, 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP)
CONT = np.arange(V) >= 30

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

token = st.integers(0, V - 1)
special_token = st.sampled_from(SPECIALS + (MASK,))
row = st.one_of(st.lists(token, max_size=30), st.lists(special_token, min_size=1, max_size=6),
                st.lists(token, min_size=1, max_size=1), st.just([]))
batch = st.lists(row, min_size=1, max_size=8)


@st.composite
def options(draw):
    mask = draw(st.sampled_from([0.0, 0.5, 0.8, 1.0]))
    rand = draw(st.sampled_from([0.0, 0.1, 0.5])) if mask < 1.0 else 0.0
    rand = min(rand, 1.0 - mask)
    exact = draw(st.booleans())
    return dict(vocab_size=V, mask_token_id=MASK, special_ids=SPECIALS,
                mlm_probability=draw(st.sampled_from([0.0, 0.15, 0.5, 1.0])),
                split=(mask, rand, 1.0 - mask - rand), whole_word_mask=draw(st.booleans()),
                exact_count=exact, max_predictions_per_seq=draw(st.sampled_from([None, 0, 3])) if exact else None)


def ref_options(opts: dict) -> dict:
    out = dict(opts, continuation_table=CONT)
    out["max_predictions_per_seq"] = -1 if opts["max_predictions_per_seq"] is None else opts["max_predictions_per_seq"]
    return out


@SETTINGS
@given(seqs=batch, opts=options(), seed=st.integers(0, 2**64 - 1), packed=st.booleans(),
       multiple=st.sampled_from([0, 1, 8]), threads=st.sampled_from([1, 3]))
def test_collate_equals_reference(seqs, opts, seed, packed, multiple, threads):
    cfg = D.masking_config(**opts, continuation_table=CONT if opts["whole_word_mask"] else None)
    pad = 0 if packed else multiple
    ours = _C.collate(seqs, None, PAD, cfg, seed, None, pad, packed, threads)
    ref = R.collate(seqs, pad_token_id=PAD, masking=ref_options(opts), seed=seed, pad_to_multiple_of=pad,
                    packed=packed)
    assert ours.keys() == ref.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


@SETTINGS
@given(seqs=batch, opts=options(), seed=st.integers(0, 2**32))
def test_invariants(seqs, opts, seed):
    cfg = D.masking_config(**opts, continuation_table=CONT if opts["whole_word_mask"] else None)
    padded = _C.collate(seqs, None, PAD, cfg, seed, None, 0, False, 1)
    packed = _C.collate(seqs, None, PAD, cfg, seed, None, 0, True, 1)
    lengths = np.array([len(s) for s in seqs])
    mask = padded["attention_mask"].astype(bool)
    assert (mask.sum(1) == lengths).all()
    assert (packed["cu_seqlens"] == np.concatenate([[0], np.cumsum(lengths)])).all()
    assert packed["max_seqlen"] == lengths.max()
    assert (packed["position_ids"] == np.concatenate([np.arange(n) for n in lengths] + [np.zeros(0, int)])).all()
    for k in ("input_ids", "labels", "token_type_ids"):
        assert (packed[k] == padded[k][mask]).all()
    original = np.array([t for s in seqs for t in s], dtype=np.int64)
    chosen = packed["labels"] != -100
    assert (packed["labels"][chosen] == original[chosen]).all()
    assert (packed["input_ids"][~chosen] == original[~chosen]).all()
    assert not np.isin(original[chosen], SPECIALS + (MASK,)).any()
    replaced = chosen & (packed["input_ids"] != original)
    assert not np.isin(packed["input_ids"][replaced], SPECIALS).any()
    assert (padded["labels"][~mask] == -100).all() and (padded["input_ids"][~mask] == PAD).all()
    if opts["mlm_probability"] == 1.0 and not opts["exact_count"]:
        candidates = ~np.isin(original, SPECIALS + (MASK,))
        assert (chosen == candidates).all()


documents = st.lists(st.lists(st.lists(st.integers(5, V - 1), min_size=1, max_size=12), min_size=1, max_size=6),
                     min_size=2, max_size=6)


@SETTINGS
@given(docs=documents, seed=st.integers(0, 2**64 - 1), max_seq_len=st.integers(5, 40),
       short=st.sampled_from([0.0, 0.1, 1.0]), threads=st.sampled_from([1, 2]))
def test_nsp_equals_reference(docs, seed, max_seq_len, short, threads):
    pairs = D.build_nsp_pairs(docs, cls_token_id=CLS, sep_token_id=SEP, max_seq_len=max_seq_len,
                              short_seq_prob=short, seed=seed, num_threads=threads)
    ref = R.build_nsp_pairs(docs, cls_token_id=CLS, sep_token_id=SEP, max_seq_len=max_seq_len,
                            short_seq_prob=short, seed=seed)
    assert len(pairs) == len(ref)
    for k, (ids, types, label) in enumerate(ref):
        item = pairs[k]
        assert item["input_ids"].tolist() == ids and item["token_type_ids"].tolist() == types
        assert item["next_sentence_label"] == label
        assert 5 <= len(ids) <= max_seq_len and ids.count(SEP) == 2


@SETTINGS
@given(seqs=batch, seed=st.integers(0, 2**32))
def test_collator_padded_and_packed_agree(seqs, seed):
    special = D.SpecialTokens(vocab_size=V, cls_token_id=CLS, sep_token_id=SEP, pad_token_id=PAD,
                              mask_token_id=MASK, unk_token_id=UNK)
    examples = [{"input_ids": s, "sample_index": i} for i, s in enumerate(seqs)]
    a = D.MLMCollator(special, seed=seed)(examples)
    b = D.MLMCollator(special, seed=seed, packed=True)(examples)
    m = a["attention_mask"].bool()
    assert torch.equal(a["labels"][m], b["labels"]) and torch.equal(a["input_ids"][m], b["input_ids"])
