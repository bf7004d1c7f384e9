"""torch.compile traces the whole model, fused ops included, without graph breaks (CPU: reference path and the
Triton interpreter behind torch.library custom ops)."""
import pytest
import torch

import fastbert
from fastbert import BertConfig

TINY = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("impl", ["eager", "sdpa", "fused"])
def test_no_graph_breaks(impl):
    torch._dynamo.reset()
    model = fastbert.BertForPreTraining(BertConfig(**TINY, attn_implementation=impl))
    ids, mask = inputs()
    labels = torch.where(mask.bool(), ids, -100)
    explain = torch._dynamo.explain(model)(ids, mask, labels=labels, next_sentence_label=torch.tensor([0, 1]))
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1


def test_compiled_fused_model_matches_eager_forward_and_backward():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = fastbert.BertModel(BertConfig(**TINY, attn_implementation="fused"))
    ids, mask = inputs()
    real = mask.bool()
    ref = model(ids, mask).last_hidden_state
    ref[real].sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(ids, mask).last_hidden_state
    out[real].sum().backward()
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        if n in ref_grads:
            torch.testing.assert_close(p.grad, ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)


def test_packed_batch_compiles_fullgraph():
    torch._dynamo.reset()
    model = fastbert.BertModel(BertConfig(**TINY, attn_implementation="fused")).eval()
    ids, mask = inputs()
    real = mask.bool()
    cu = torch.nn.functional.pad(mask.sum(1).cumsum(0), (1, 0)).int()
    ref = model(ids[real], cu_seqlens=cu, max_seqlen=11).last_hidden_state
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(ids[real], cu_seqlens=cu, max_seqlen=11).last_hidden_state, ref,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "fused"])
def test_autocast_bf16_compiles_without_graph_breaks(impl, monkeypatch):
    """bf16 autocast through the whole model; on CPU the fused ops take their reference path here (the Triton
    interpreter miscomputes bf16 dots), so this checks the dispatch, dtypes and tracing, not the kernels."""
    from fastbert import _backend

    monkeypatch.setattr(_backend, "TRITON_INTERPRET", False)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = fastbert.BertModel(BertConfig(**TINY, attn_implementation=impl)).eval()
    ids, mask = inputs()
    real = mask.bool()
    with torch.no_grad():
        ref = model(ids, mask).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            explain = torch._dynamo.explain(model)(ids, mask)
            out = torch.compile(model, backend="aot_eager", fullgraph=True)(ids, mask).last_hidden_state
    assert explain.graph_break_count == 0, explain.break_reasons
    # eager/sdpa end in nn.LayerNorm, which autocast runs in fp32; the fused LayerNorm returns its input's dtype
    assert out.dtype == (torch.bfloat16 if impl == "fused" else torch.float32)
    torch.testing.assert_close(out[real].float(), ref[real], atol=0.1, rtol=0.05)
