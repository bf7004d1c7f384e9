"""The "fused" encoder (Triton attention, dropout+residual+LayerNorm, bias+GELU; the interpreter on CPU) and the
padding-free path, against the eager encoder: outputs and gradients at real positions."""
import pytest
import torch

import fastbert
from fastbert import BertConfig
from fastbert.models.bert import labeled_positions
from helpers import FLOOR, K_GRAD, K_OUT, maxerr

def batch(padded_batch, mode="right"):
    b = padded_batch(mode)
    return b["input_ids"], b["attention_mask"], b["labels"]


def run(model, ids, mask, labels, **kw):
    model.zero_grad(set_to_none=True)
    # NSP needs a [CLS] state at position 0: a row whose position 0 is padding (left-padded or fully padded) has
    # none (the padded path pools the padding position like HF, the packed path the first real token): ignore it
    nsp = torch.where(mask[:, 0].bool(), 0, -100)
    out = model(ids, mask, labels=labels, next_sentence_label=nsp, **kw)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def three_way(ours, ref32, reflp, k, name):
    err, base = maxerr(ours, ref32), maxerr(reflp, ref32)
    bound = k * base + FLOOR[ours.dtype]
    assert err <= bound, f"{name}: {err:.3e} > {bound:.3e}"


@pytest.mark.parametrize("mode", ["right", "one_row_padded"])
@pytest.mark.parametrize("unpad", ["never", "always"])
def test_fused_model_matches_eager_fp32(mode, unpad, tiny_config, padded_batch):
    torch.manual_seed(0)
    model = fastbert.BertForPreTraining(tiny_config())
    ids, mask, labels = batch(padded_batch, mode)
    ref, ref_grads = run(model, ids, mask, labels)
    model.set_attn_implementation("fused")
    model.bert.unpad = unpad
    out, grads = run(model, ids, mask, labels)
    real = mask.bool()
    torch.testing.assert_close(out.prediction_logits[real], ref.prediction_logits[real], atol=1e-4, rtol=1e-4)
    rows = mask[:, 0].bool()
    torch.testing.assert_close(out.seq_relationship_logits[rows], ref.seq_relationship_logits[rows], atol=1e-4, rtol=1e-4)
    assert torch.isfinite(out.seq_relationship_logits).all()
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item()
        assert maxerr(g, ref_grads[name]) <= 1e-4 * max(scale, 1.0), name


def test_fused_model_fp16_three_way(tiny_config, padded_batch):
    """fp16 fused model vs fp32 eager reference, bounded by how far the fp16 eager model is from it."""
    torch.manual_seed(0)
    model = fastbert.BertModel(tiny_config())
    ids, mask, _ = batch(padded_batch)
    real = mask.bool()

    def forward_backward(m):
        m.zero_grad(set_to_none=True)
        h = m(ids, mask).last_hidden_state
        h[real].float().pow(2).mean().backward()
        return h[real].float(), m.embeddings.word_embeddings.weight.grad.float()

    h32, g32 = forward_backward(model)
    half = fastbert.BertModel(tiny_config()).half()
    half.load_state_dict(model.state_dict())
    hlp, glp = forward_backward(half)
    half.set_attn_implementation("fused")
    hf, gf = forward_backward(half)
    three_way(hf, h32, hlp, K_OUT * 2, "last_hidden_state")  # 2 layers of fp16 rounding compound: 2x the op bound
    three_way(gf, g32, glp, K_GRAD * 2, "word_embeddings.grad")


@pytest.mark.parametrize("impl", ["eager", "sdpa", "fused"])
@pytest.mark.parametrize("mode", ["right", "left", "holes"])
def test_unpadded_equals_padded(impl, mode, tiny_config, padded_batch):
    """Internal unpadding (any 0/1 mask pattern) gives the padded result at real positions, values and grads."""
    torch.manual_seed(0)
    model = fastbert.BertForPreTraining(tiny_config(attn_implementation=impl))
    ids, mask, labels = batch(padded_batch, mode)
    model.bert.unpad = "never"
    ref, ref_grads = run(model, ids, mask, labels)
    model.bert.unpad = "always"
    out, grads = run(model, ids, mask, labels)
    real = mask.bool()
    torch.testing.assert_close(out.prediction_logits[real], ref.prediction_logits[real], atol=2e-5, rtol=2e-5)
    assert (out.prediction_logits[~real] == out.prediction_logits[~real][:1]).all()  # padding rows: bias-only logits
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=2e-5, rtol=2e-4, msg=name)


def test_auto_unpad_rule(tiny_config, padded_batch):
    """_maybe_unpad -> (packed layout or None, the mask the padded layout keeps): the path's rule decides."""
    model = fastbert.BertModel(tiny_config(attn_implementation="fused"))
    _, mask, _ = batch(padded_batch)  # 47% padding
    unpadded, kept = model._maybe_unpad(mask)
    assert unpadded is not None and kept is mask
    full = torch.ones(3, 19, dtype=torch.long)
    unpadded, kept = model._maybe_unpad(full)
    assert unpadded is None and kept is None  # no padding: padded layout without any mask
    model.set_attn_implementation("eager")
    unpadded, kept = model._maybe_unpad(mask)
    assert unpadded is None and kept is mask  # eager stays HF-like unless asked
    model.set_attn_implementation("sdpa")
    assert model._maybe_unpad(mask)[0] is not None  # sdpa (the CPU default) unpads from 3% padding
    one_pad = full.clone()
    one_pad[0, -1] = 0  # 1 of 57 positions (1.8%): below the rule
    unpadded, kept = model._maybe_unpad(one_pad)
    assert unpadded is None and kept is one_pad
    model.unpad = "always"
    assert model._maybe_unpad(full)[0] is not None
    model.unpad = "bogus"
    with pytest.raises(ValueError, match="unpad"):
        model._maybe_unpad(mask)


@pytest.mark.parametrize("impl", ["eager", "fused"])
def test_packed_input_equals_padded(impl, tiny_config, padded_batch, packed_batch):
    torch.manual_seed(0)
    model = fastbert.BertForPreTraining(tiny_config(attn_implementation=impl))
    ids, mask, labels = batch(padded_batch)
    model.bert.unpad = "never"
    ref, ref_grads = run(model, ids, mask, labels)
    real = mask.bool()
    packed = packed_batch({"input_ids": ids, "attention_mask": mask, "labels": labels})
    model.zero_grad(set_to_none=True)
    out = model(**packed, next_sentence_label=torch.zeros(3, dtype=torch.long))
    out.loss.backward()
    torch.testing.assert_close(out.prediction_logits, ref.prediction_logits[real], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], atol=2e-5, rtol=2e-4, msg=name)


def test_mlm_head_only_at_labels_same_loss_and_grads(tiny_config, padded_batch):
    torch.manual_seed(0)
    model = fastbert.BertForPreTraining(tiny_config())
    ids, mask, labels = batch(padded_batch)
    ref, ref_grads = run(model, ids, mask, labels)
    positions = labeled_positions(labels)
    out, grads = run(model, ids, mask, labels, masked_positions=positions)
    assert out.prediction_logits.shape == (positions.numel(), model.config.vocab_size)
    assert positions.numel() < 0.25 * ids.numel()
    torch.testing.assert_close(out.prediction_logits, ref.prediction_logits.reshape(-1, model.config.vocab_size)[positions])
    torch.testing.assert_close(out.loss, ref.loss)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], msg=name)


def test_packed_question_answering_matches_padded(tiny_config, padded_batch, packed_batch):
    torch.manual_seed(0)
    model = fastbert.BertForQuestionAnswering(tiny_config()).eval()
    ids, mask, _ = batch(padded_batch)
    real = mask.bool()
    packed = packed_batch({"input_ids": ids, "attention_mask": mask})
    start, end = torch.tensor([1, 2, 0]), torch.tensor([3, 5, 2])
    a = model(ids, mask)
    b = model(**packed, start_positions=start, end_positions=end)
    torch.testing.assert_close(b.start_logits[real], a.start_logits[real], atol=2e-5, rtol=2e-5)
    # packed: the span softmax runs over real tokens only
    masked = lambda x: x.masked_fill(~real, float("-inf"))  # noqa: E731
    ce = torch.nn.functional.cross_entropy
    expected = (ce(masked(a.start_logits), start) + ce(masked(a.end_logits), end)) / 2
    torch.testing.assert_close(b.loss, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# GPU: bf16 parity with transformers, no host syncs, CUDA graphs
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("packed", [False, True])
def test_bf16_pretraining_loss_matches_transformers(packed):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="fused")
    ours = fastbert.BertForPreTraining(cfg).cuda()
    hf = transformers.BertForPreTraining(cfg.to_hf(attn_implementation="sdpa")).cuda()
    hf.load_state_dict(ours.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([512, 300, 77, 1, 450, 226, 12, 390])
    mask = (torch.arange(512)[None] < lengths[:, None]).long()
    ids = torch.randint(1000, 30000, (8, 512), generator=g) * mask
    labels = torch.where((torch.rand(8, 512, generator=g) < 0.15) & mask.bool(), ids, -100)
    nsp = torch.randint(0, 2, (8,), generator=g)
    ids, mask, labels, nsp = ids.cuda(), mask.cuda(), labels.cuda(), nsp.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels, next_sentence_label=nsp).loss.float()
        if packed:
            real = mask.bool()
            cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int().cuda()
            out = ours(ids[real], cu_seqlens=cu, max_seqlen=512, labels=labels[real], next_sentence_label=nsp)
        else:
            out = ours(ids, mask, labels=labels, next_sentence_label=nsp)
    with torch.no_grad():
        ref32 = hf.float()(input_ids=ids, attention_mask=mask, labels=labels, next_sentence_label=nsp).loss
    # bf16 tolerance: our bf16 loss is as close to the fp32 loss as HF's own bf16 loss is, up to a factor 2 + 1e-2
    assert abs(out.loss.float() - ref32) <= 2 * abs(ref - ref32) + 1e-2 * ref32


@pytest.mark.gpu
def test_packed_forward_has_no_host_sync_and_graph_captures():
    torch.manual_seed(0)
    model = fastbert.BertModel(BertConfig(attn_implementation="fused")).cuda().eval().to(torch.bfloat16)
    model.check_inputs = False
    lengths = torch.tensor([128, 77, 1, 100])
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int().cuda()
    ids = torch.randint(1000, 30000, (int(lengths.sum()),), device="cuda")
    with torch.no_grad():
        ref = model(ids, cu_seqlens=cu, max_seqlen=128).last_hidden_state
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any device->host sync in the forward raises
        try:
            model(ids, cu_seqlens=cu, max_seqlen=128)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model(ids, cu_seqlens=cu, max_seqlen=128)  # warm-up on the capture stream
            with torch.cuda.graph(graph, stream=stream):
                captured = model(ids, cu_seqlens=cu, max_seqlen=128).last_hidden_state
        torch.cuda.current_stream().wait_stream(stream)
        graph.replay()
        torch.cuda.synchronize()
    torch.testing.assert_close(captured, ref)
