"""Every public entry point under ``torch.no_grad()`` and ``torch.inference_mode()``: the models and heads on every
path ("eager", "sdpa", "fused", "auto") and layout (padded kept padded, padded unpadded internally, packed), the
functional ops, a ``fastbert.patch``ed transformers model and the collator. Each gives what the same call gives with
grad enabled (models in eval mode), and the collator's batches stay usable as model input, for training too.

1-layer tiny models and small batches keep the fused path quick in Triton's interpreter; the grad-enabled
reference of each (model, path, layout) is computed once and shared by both contexts.
"""
import functools

import pytest
import torch

import fastbert
from fastbert.data import MLMCollator, SpecialTokens, collate
from fastbert.ops import attention, bias_gelu, layer_norm

CONTEXTS = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
PATHS = ("eager", "sdpa", "fused", "auto")
# padded-unpad: the model unpads internally (unpad="always"); padded: kept padded (unpad="never")
LAYOUTS = ("padded-unpad", "padded", "packed")
HEADS = ("BertModel", "BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction",
         "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering")
BATCH, SEQLEN = 3, 11
SMALL = dict(num_hidden_layers=1, num_attention_heads=1)  # fewer programs for the interpreter


def _tensors(out) -> list[torch.Tensor]:
    """The output's tensors, flattened (hidden_states is a tuple)."""
    flat = []
    for value in out.to_tuple():
        flat.extend(value if isinstance(value, tuple) else (value,))
    return flat


def _labels(head: str, batch: dict) -> dict:
    """Targets for ``head`` (so the loss is computed under the context too)."""
    per_seq = torch.tensor([0, 1, 0])
    if head in ("BertForPreTraining", "BertForMaskedLM"):
        extra = dict(labels=batch["labels"])
        return {**extra, "next_sentence_label": per_seq} if head == "BertForPreTraining" else extra
    if head in ("BertForNextSentencePrediction", "BertForSequenceClassification"):
        return dict(labels=per_seq)
    if head == "BertForTokenClassification":
        return dict(labels=torch.where(batch["labels"] == -100, -100, batch["labels"] % 2))
    if head == "BertForQuestionAnswering":
        return dict(start_positions=torch.tensor([0, 1, 2]), end_positions=torch.tensor([1, 2, 3]))
    return {}


@functools.lru_cache(maxsize=None)
def _model_and_reference(head, path, layout, device, tiny_config, padded_batch, packed_batch):
    """(model, inputs, grad-enabled eval outputs) for one case, built once."""
    torch.manual_seed(0)
    model = getattr(fastbert, head)(tiny_config(**SMALL, attn_implementation=path)).eval().to(device)
    (model if head == "BertModel" else model.bert).unpad = "always" if layout == "padded-unpad" else "never"
    padded = padded_batch("right", batch=BATCH, seqlen=SEQLEN)  # 24 of 33 positions are padding
    if layout == "packed":
        batch = packed_batch(padded)
        inputs = dict(input_ids=batch["input_ids"], cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"])
    else:
        batch = padded
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    inputs.update(_labels(head, batch))
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    inputs["output_hidden_states"] = True
    with torch.enable_grad():
        ref = _tensors(model(**inputs))
    assert any(t.requires_grad for t in ref)  # the reference really is the grad-enabled forward
    return model, inputs, [t.detach() for t in ref]


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("head", HEADS)
def test_models_under_no_grad_and_inference_mode(head, path, layout, context, device, tiny_config, padded_batch,
                                                 packed_batch):
    model, inputs, ref = _model_and_reference(head, path, layout, device, tiny_config, padded_batch, packed_batch)
    with CONTEXTS[context]():
        out = _tensors(model(**inputs))
    assert len(out) == len(ref)
    for i, (o, r) in enumerate(zip(out, ref)):
        assert not o.requires_grad
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5, msg=lambda m: f"output {i}: {m}")


@pytest.mark.parametrize("context", CONTEXTS)
def test_fused_internal_unpad_under_inference_mode_regression(context, device, tiny_config, padded_batch):
    """The fused path unpads a padded batch itself (default unpad="auto"); the cu_seqlens it builds under
    inference_mode has no version counter, and the attention's cu_seqlens check raised "Inference tensors do not
    track version counter" (fixed in 673667b)."""
    model = fastbert.BertModel(tiny_config(num_hidden_layers=1, attn_implementation="fused")).eval().to(device)
    b = padded_batch("right", batch=BATCH, seqlen=SEQLEN, device=device)
    assert model.unpad == "auto" and model._maybe_unpad(b["attention_mask"]) is not None  # this batch is unpadded
    ref = model(b["input_ids"], b["attention_mask"])
    with CONTEXTS[context]():
        out = model(b["input_ids"], b["attention_mask"])
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state.detach())
    torch.testing.assert_close(out.pooler_output, ref.pooler_output.detach())


# ----------------------------------------------------------------------------------------------------------------
# functional ops
# ----------------------------------------------------------------------------------------------------------------
def _attention_padded(device):
    q, k, v = (torch.randn(2, 7, 2, 16, device=device, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], device=device)
    return lambda: attention(q, k, v, attention_mask=mask)


def _attention_packed(device):
    q, k, v = (torch.randn(7, 2, 16, device=device, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 3, 3, 7], dtype=torch.int32, device=device)  # a zero-length sequence in the middle
    return lambda: attention(q, k, v, cu_seqlens=cu, max_seqlen=4)


def _layer_norm(device, residual: bool):
    x = torch.randn(3, 5, 32, device=device, requires_grad=True)
    w = torch.randn(32, device=device, requires_grad=True)
    b = torch.randn(32, device=device, requires_grad=True)
    r = torch.randn(3, 5, 32, device=device, requires_grad=True) if residual else None
    return lambda: layer_norm(x, w, b, 1e-12, residual=r)


def _bias_gelu(device, approximate: str):
    x = torch.randn(3, 5, 32, device=device, requires_grad=True)
    b = torch.randn(32, device=device, requires_grad=True)
    return lambda: bias_gelu(x, b, approximate=approximate)


OPS = {
    "attention-padded": _attention_padded,
    "attention-packed": _attention_packed,
    "layer_norm": functools.partial(_layer_norm, residual=False),
    "layer_norm-residual": functools.partial(_layer_norm, residual=True),
    "bias_gelu-none": functools.partial(_bias_gelu, approximate="none"),
    "bias_gelu-tanh": functools.partial(_bias_gelu, approximate="tanh"),
}


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("op", OPS)
def test_functionals_under_no_grad_and_inference_mode(op, context, device):
    call = OPS[op](device)
    ref = call()
    assert ref.requires_grad
    with CONTEXTS[context]():
        out = call()
    assert not out.requires_grad
    torch.testing.assert_close(out, ref.detach(), atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# fastbert.patch on a transformers model
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("path", PATHS)
def test_patched_transformers_model_under_no_grad_and_inference_mode(path, context, device, tiny_config, padded_batch):
    transformers = pytest.importorskip("transformers")
    model = transformers.BertModel(tiny_config(num_hidden_layers=1).to_hf(attn_implementation="eager")).eval()
    fastbert.patch(model.to(device), attn_implementation=path)
    b = padded_batch("right", batch=BATCH, seqlen=SEQLEN, device=device)
    ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    with CONTEXTS[context]():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    assert not out.last_hidden_state.requires_grad
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output.detach(), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# the collator: same batch in every context, and a batch made under a context still trains a model
# ----------------------------------------------------------------------------------------------------------------
SPECIAL = SpecialTokens(vocab_size=300, cls_token_id=1, sep_token_id=2, pad_token_id=0, mask_token_id=3, unk_token_id=4)
EXAMPLES = [
    {"input_ids": [1, 5, 6, 7, 2, 8, 9, 2], "token_type_ids": [0, 0, 0, 0, 0, 1, 1, 1], "next_sentence_label": 0,
     "sample_index": 0},
    {"input_ids": [1, 10, 2, 11, 2], "token_type_ids": [0, 0, 0, 1, 1], "next_sentence_label": 1, "sample_index": 1},
    {"input_ids": [1, 12, 13, 14, 15, 16, 2, 17, 2], "token_type_ids": [0] * 7 + [1] * 2, "next_sentence_label": 0,
     "sample_index": 2},
]


def _make_batch(kind: str, packed: bool) -> dict:
    if kind == "MLMCollator":
        return MLMCollator(SPECIAL, mlm_probability=0.5, packed=packed, seed=0)(EXAMPLES)
    return collate([ex["input_ids"] for ex in EXAMPLES], [ex["token_type_ids"] for ex in EXAMPLES], packed=packed)


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("kind", ["MLMCollator", "collate"])
def test_collator_under_no_grad_and_inference_mode(kind, packed, context, tiny_config):
    ref = _make_batch(kind, packed)
    with CONTEXTS[context]():
        batch = _make_batch(kind, packed)
    assert batch.keys() == ref.keys()
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            assert not value.is_inference(), key
            assert torch.equal(value, ref[key]), key
        else:
            assert value == ref[key], key

    model = fastbert.BertForPreTraining(tiny_config(num_hidden_layers=1, attn_implementation="eager"))
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "next_sentence_label")}
    if kind == "MLMCollator":  # training on the batch made under the context: forward and backward
        out = model(**batch)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with CONTEXTS[context]():  # and inference on it
        out = model(**inputs)
    assert all(torch.isfinite(t).all() for t in _tensors(out))
