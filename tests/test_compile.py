"""torch.compile traces the whole model, fused ops included, without graph breaks (CPU: reference path and the
Triton interpreter behind torch.library custom ops)."""
import pytest
import torch

import fastbert

def inputs(padded_batch):
    b = padded_batch("right", batch=3, seqlen=11)
    return b["input_ids"], b["attention_mask"]


@pytest.mark.parametrize("impl", ["eager", "sdpa", "fused"])
def test_no_graph_breaks(impl, tiny_config, padded_batch):
    torch._dynamo.reset()
    model = fastbert.BertForPreTraining(tiny_config(attn_implementation=impl))
    ids, mask = inputs(padded_batch)
    labels = torch.where(mask.bool(), ids, -100)
    explain = torch._dynamo.explain(model)(ids, mask, labels=labels, next_sentence_label=torch.tensor([0, 1, 0]))
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1


def test_compiled_fused_model_matches_eager_forward_and_backward(tiny_config, padded_batch):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = fastbert.BertModel(tiny_config(attn_implementation="fused"))
    ids, mask = inputs(padded_batch)
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


def test_packed_batch_compiles_fullgraph(tiny_config, padded_batch, packed_batch):
    torch._dynamo.reset()
    model = fastbert.BertModel(tiny_config(attn_implementation="fused")).eval()
    ids, mask = inputs(padded_batch)
    packed = packed_batch({"input_ids": ids, "attention_mask": mask})
    ref = model(**packed).last_hidden_state
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(**packed).last_hidden_state, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "fused"])
def test_autocast_bf16_compiles_without_graph_breaks(impl, monkeypatch, tiny_config, padded_batch):
    """bf16 autocast through the whole model; on CPU the fused ops take their reference path here (the Triton
    interpreter miscomputes bf16 dots), so this checks the dispatch, dtypes and tracing, not the kernels."""
    from fastbert import _backend

    monkeypatch.setattr(_backend, "TRITON_INTERPRET", False)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = fastbert.BertModel(tiny_config(attn_implementation=impl)).eval()
    ids, mask = inputs(padded_batch)
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
